"""A cheap intrinsic metric: exact match and edit similarity of single-line infills on held-out files.

HumanEval-Infilling needs program execution and only covers 164 small functions; this metric needs neither
tests nor a sandbox and runs on the validation split of our own corpus (``valid.jsonl``: one JSON object per
line with ``path``, ``sha`` and ``text``, as ``diffucoder train corpus`` writes it), so it tracks training
progress on the code the model will actually see.

Sampling (deterministic for a given corpus and seed): files are ordered by (sha, path) and shuffled with
``random.Random(seed)``; from each file ``per_file`` lines are drawn with ``random.Random(f"{seed}:{sha}")``
among its eligible lines (non-blank, at most ``max_line_chars`` characters, no literal mask marker), until
``limit`` samples are collected. The context is a window around the line, cut at line boundaries:
``max_prefix_chars`` before and ``max_suffix_chars`` after, so every sample costs about the same.

As in the HumanEval tasks, the hidden text is the line without its newline. Scores compare the fill and the
truth after removing trailing whitespace (a trailing newline or space is not an error); leading whitespace is
indentation and counts. Exact match is the fraction of identical lines; edit similarity is
``1 - levenshtein(fill, truth) / max(len(fill), len(truth))`` (1.0 for two empty strings), averaged.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import BadInputError
from .runner import MASK, FillFn, Progress


@dataclass(frozen=True)
class LineSample:
    """One hidden line of a held-out file, with the context window around it."""

    path: str
    line_no: int  # 0-based line number in the file
    prefix: str
    middle: str
    suffix: str


@dataclass
class LineRecord:
    """One scored sample: the truth, the fill and its scores (``error`` set when the fill raised)."""

    path: str
    line_no: int
    length: int | str
    middle: str
    fill: str
    exact_match: bool = False
    edit_similarity: float = 0.0
    fill_ms: float = 0.0
    error: str = ""


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each), two-row dynamic program."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(fill: str, truth: str) -> float:
    """``1 - distance / longer length`` on the right-stripped strings: 1.0 identical, 0.0 nothing in common."""
    a, b = fill.rstrip(), truth.rstrip()
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(a, b) / longest


def load_corpus(path: str | Path) -> list[dict]:
    """Read a ``{"path", "sha", "text"}`` JSON-lines file; rows without text are skipped."""
    path = Path(path)
    docs = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("text"), str):
                    docs.append(row)
                else:
                    raise ValueError(f"line {n} has no text field")
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read corpus {path}: {exc}") from exc
    return docs


def _window_prefix(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    window = text[-max_chars:]
    cut = window.find("\n")
    return window[cut + 1 :] if cut >= 0 else window


def _window_suffix(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    window = text[:max_chars]
    cut = window.rfind("\n")
    return window[: cut + 1] if cut > 0 else window


def sample_lines(
    docs: Sequence[dict],
    *,
    limit: int = 200,
    seed: int = 0,
    per_file: int = 2,
    max_line_chars: int = 200,
    max_prefix_chars: int = 2000,
    max_suffix_chars: int = 1000,
    marker: str = MASK,
) -> list[LineSample]:
    """Draw up to ``limit`` single-line samples as the module docstring describes."""
    order = sorted(docs, key=lambda d: (str(d.get("sha", "")), str(d.get("path", ""))))
    random.Random(seed).shuffle(order)
    samples: list[LineSample] = []
    for doc in order:
        if len(samples) >= limit:
            break
        text = doc["text"]
        lines = text.splitlines(keepends=True)
        starts, pos = [], 0
        for line in lines:
            starts.append(pos)
            pos += len(line)
        eligible = [
            i for i, line in enumerate(lines) if line.strip() and len(line.rstrip("\r\n")) <= max_line_chars
        ]
        if not eligible or marker in text:
            continue
        rng = random.Random(f"{seed}:{doc.get('sha', doc.get('path', ''))}")
        for i in sorted(rng.sample(eligible, min(per_file, len(eligible)))):
            start = starts[i]
            end = start + len(lines[i].rstrip("\r\n"))
            samples.append(
                LineSample(
                    path=str(doc.get("path", "")),
                    line_no=i,
                    prefix=_window_prefix(text[:start], max_prefix_chars),
                    middle=text[start:end],
                    suffix=_window_suffix(text[end:], max_suffix_chars),
                )
            )
            if len(samples) >= limit:
                break
    return samples


def evaluate_lines(
    samples: Sequence[LineSample],
    fill_fn: FillFn,
    *,
    length_mode: str = "oracle",
    count_tokens: Callable[[str], int] | None = None,
    progress: bool = True,
) -> list[LineRecord]:
    """Fill every sample and score it. A fill that raises scores 0 (similarity 0) and keeps its error."""
    import logging
    import time

    log = logging.getLogger(__name__)
    bar = Progress(len(samples), "intrinsic", enabled=progress, metric="exact")
    records = []
    try:
        for s in samples:
            if length_mode == "oracle":
                length: int | str = count_tokens(s.middle) if count_tokens else len(s.middle)
            else:
                length = "auto"
            rec = LineRecord(s.path, s.line_no, length, s.middle, "")
            t0 = time.perf_counter()
            try:
                rec.fill = fill_fn(s.prefix, s.suffix, length)
                rec.exact_match = rec.fill.rstrip() == s.middle.rstrip()
                rec.edit_similarity = round(edit_similarity(rec.fill, s.middle), 4)
            except Exception as exc:
                log.warning("fill failed for %s:%d: %s", s.path, s.line_no, exc)
                rec.error = f"{type(exc).__name__}: {exc}"
            rec.fill_ms = round((time.perf_counter() - t0) * 1000.0, 1)
            records.append(rec)
            bar.update(rec.exact_match)
    finally:
        bar.close()
    return records


BOOTSTRAP_ROUNDS = 2000


def bootstrap_ci(
    values: Sequence[float], *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of ``values`` (resampled with replacement; seeded).

    Why: a fine-tuning run is judged on a few hundred held-out lines, where a point or two of exact match is
    within noise; the interval says whether a change is more than that.
    """
    n = len(values)
    if n == 0:
        return (0.0, 0.0)
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    return (means[int(0.025 * rounds)], means[min(rounds - 1, int(0.975 * rounds))])


def _pct(pair: tuple[float, float]) -> list[float]:
    return [round(100.0 * pair[0], 2), round(100.0 * pair[1], 2)]


def summarize_lines(records: Sequence[LineRecord]) -> dict:
    """Exact match and mean edit similarity in percent with 95 % bootstrap intervals, the mean length of the fills
    against the truth's (characters, trailing whitespace aside: a model that learned to stop early shows
    here first), mean fill latency, number of failed fills."""
    n = len(records)
    if n == 0:
        return {
            "n": 0,
            "exact_match": 0.0,
            "exact_match_ci95": [0.0, 0.0],
            "edit_similarity": 0.0,
            "edit_similarity_ci95": [0.0, 0.0],
            "mean_fill_chars": 0.0,
            "mean_truth_chars": 0.0,
            "mean_fill_ms": 0.0,
            "errors": 0,
        }
    exact = [float(r.exact_match) for r in records]
    sim = [r.edit_similarity for r in records]
    return {
        "n": n,
        "exact_match": round(100.0 * sum(exact) / n, 2),
        "exact_match_ci95": _pct(bootstrap_ci(exact)),
        "edit_similarity": round(100.0 * sum(sim) / n, 2),
        "edit_similarity_ci95": _pct(bootstrap_ci(sim)),
        "mean_fill_chars": round(sum(len(r.fill.rstrip()) for r in records) / n, 1),
        "mean_truth_chars": round(sum(len(r.middle.rstrip()) for r in records) / n, 1),
        "mean_fill_ms": round(sum(r.fill_ms for r in records) / n, 1),
        "errors": sum(bool(r.error) for r in records),
    }


def compare_lines(before: Sequence[LineRecord], after: Sequence[LineRecord]) -> dict:
    """The change from ``before`` to ``after`` on the same samples (same order), in points, with 95 % paired
    bootstrap intervals: the per-line differences are resampled, so the interval is not widened by how hard
    the lines are (a line both models miss contributes 0 to every resample)."""
    if len(before) != len(after):
        raise ValueError(f"cannot pair {len(before)} records with {len(after)}")
    n = len(before)
    if n == 0:
        return {"n": 0}
    d_exact = [float(a.exact_match) - float(b.exact_match) for b, a in zip(before, after, strict=True)]
    d_sim = [a.edit_similarity - b.edit_similarity for b, a in zip(before, after, strict=True)]
    d_len = [len(a.fill.rstrip()) - len(b.fill.rstrip()) for b, a in zip(before, after, strict=True)]
    return {
        "n": n,
        "exact_match_delta": round(100.0 * sum(d_exact) / n, 2),
        "exact_match_delta_ci95": _pct(bootstrap_ci(d_exact)),
        "edit_similarity_delta": round(100.0 * sum(d_sim) / n, 2),
        "edit_similarity_delta_ci95": _pct(bootstrap_ci(d_sim)),
        "fill_chars_delta": round(sum(d_len) / n, 1),
    }


def records_as_dicts(records: Sequence[LineRecord]) -> list[dict]:
    """Plain dicts for the JSON result file."""
    return [asdict(r) for r in records]
