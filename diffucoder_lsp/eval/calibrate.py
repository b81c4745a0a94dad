"""Calibrating the confidence gate: which score, and which threshold, separate right suggestions from wrong ones.

Why: the language server can withhold a suggestion the model is unsure of (``minConfidence``). A threshold
only means something once measured: on held-out real code, how many suggestions does it keep (coverage) and
how many of the kept ones are right (precision)? This module makes editor-like requests, records each
suggestion's score under every statistic of :mod:`diffucoder_lsp.engine.confidence` and whether it was right,
and reads off the precision-vs-coverage curve of each statistic and the threshold reaching a target precision.

Requests (:func:`sample_requests`, reproducible for a given set of documents and seed): a non-blank line of a
document (at most ``max_line_chars``, in a document without the hole marker) and a cursor on it, from the end
of its indentation to its last character; the rest of the line is hidden (and ``hide_lines`` following lines
with it), as if the user were typing the line. The suggestion is right when its first line equals the hidden
rest of the line, trailing whitespace aside.

Scoring: a request is *answered* at threshold x when the suggestion shown is not empty and its score is at
least x (the server's rule: withheld below). Coverage is answered / requests, precision correct / answered.
The threshold reported for a target precision is the one with the highest coverage whose precision reaches the
target; the best statistic is the one covering most there (ties, or no statistic reaching it: the largest area
under the precision-coverage curve).

The model is not called here: the caller passes a :data:`Completer` (``diffucoder eval calibrate`` builds one
that runs the language server's own completion path, settings, post-processing and all).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..engine.confidence import STATISTICS, Calibration, SuggestionTokens, all_statistics
from ..errors import BadInputError
from .runner import MASK, Progress

log = logging.getLogger(__name__)

# (prefix, suffix) -> (the text the editor would show, "" for nothing; the suggestion's tokens)
Completer = Callable[[str, str], tuple[str, SuggestionTokens]]

_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".mypy_cache"}
MAX_FILE_BYTES = 1_000_000
# the printed table's columns, as shares of the requests answered without a gate
COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Request:
    source: str  # file or corpus path
    line_no: int  # 0-based
    column: int  # cursor, in characters from the line start
    prefix: str
    suffix: str
    truth: str  # the hidden rest of the line


@dataclass
class Outcome:
    source: str
    line_no: int
    column: int
    truth: str
    suggestion: str  # the first line of what the editor would show ("" for nothing)
    answered: bool  # something would be shown without a gate
    correct: bool
    scores: dict[str, float]
    fill_ms: float
    error: str = ""  # the completion raised: nothing shown, as the server would answer


# --- documents and requests ----------------------------------------------------------------------------------


def documents_from_folder(folder: str | Path) -> list[tuple[str, str]]:
    """(relative path, text) of every UTF-8 text file under ``folder`` (hidden and tool folders skipped),
    sorted by path so that sampling does not depend on the file system's order."""
    root = Path(folder)
    if not root.is_dir():
        raise BadInputError(f"--files: {folder} is not a folder")
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if b"\0" in data[:8192]:
                continue
            try:
                docs.append((path.relative_to(root).as_posix(), data.decode("utf-8")))
            except UnicodeDecodeError:
                continue
    return sorted(docs)


def documents_from_corpus(folder: str | Path, split: str) -> list[tuple[str, str]]:
    """(path, text) of a corpus split (``{split}.jsonl`` rows with a ``text`` field, as ``train corpus``
    writes them), in file order."""
    from .intrinsic import load_corpus

    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise BadInputError(f"--corpus: no {split}.jsonl in {folder}")
    return [(str(row.get("path", f"{split}:{i}")), row["text"]) for i, row in enumerate(load_corpus(path))]


def sample_requests(
    docs: Sequence[tuple[str, str]],
    n: int,
    *,
    seed: int = 0,
    hide_lines: int = 0,
    max_line_chars: int = 200,
    marker: str = MASK,
) -> list[Request]:
    """Up to ``n`` editor-like requests drawn uniformly over the eligible lines of ``docs`` (see the module
    docstring); the same documents and seed give the same requests."""
    split_docs = [(name, text.splitlines(keepends=True)) for name, text in docs if marker not in text]
    eligible = [
        (d, i)
        for d, (_, lines) in enumerate(split_docs)
        for i, line in enumerate(lines)
        if line.strip() and len(line.rstrip("\r\n")) <= max_line_chars
    ]
    rng = random.Random(seed)
    picks = rng.sample(eligible, min(n, len(eligible)))
    requests = []
    for d, i in picks:
        name, lines = split_docs[d]
        line = lines[i]
        body = line.rstrip("\r\n")
        indent = len(body) - len(body.lstrip())
        column = rng.randrange(indent, len(body.rstrip()))
        prefix = "".join(lines[:i]) + body[:column]
        suffix = line[len(body) :] + "".join(lines[i + 1 + hide_lines :])
        requests.append(Request(name, i, column, prefix, suffix, body[column:]))
    return requests


# --- running them ------------------------------------------------------------------------------------------


def is_correct(shown: str, truth: str) -> bool:
    """Whether the suggestion's first line is the hidden rest of the line, trailing whitespace aside."""
    return shown.split("\n", 1)[0].rstrip() == truth.rstrip()


def run_requests(
    requests: Sequence[Request], completer: Completer, *, progress: bool = True
) -> list[Outcome]:
    """Ask for a completion at every request and record its scores and whether it was right. A completion
    that raises counts as answered with nothing (the server answers such a request empty) and keeps its error."""
    bar = Progress(len(requests), "calibrate", enabled=progress, metric="right")
    outcomes = []
    try:
        for r in requests:
            t0 = time.perf_counter()
            error = ""
            try:
                shown, tokens = completer(r.prefix, r.suffix)
            except Exception as exc:
                log.warning("completion failed at %s:%d: %s", r.source, r.line_no, exc)
                shown, tokens, error = "", SuggestionTokens(()), f"{type(exc).__name__}: {exc}"
            answered = bool(shown.strip())
            correct = answered and is_correct(shown, r.truth)
            outcomes.append(
                Outcome(
                    r.source,
                    r.line_no,
                    r.column,
                    r.truth,
                    shown.split("\n", 1)[0],
                    answered,
                    correct,
                    {k: round(v, 6) for k, v in all_statistics(tokens).items()},
                    round((time.perf_counter() - t0) * 1000, 1),
                    error,
                )
            )
            bar.update(correct)
    finally:
        bar.close()
    return outcomes


# --- curves ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """At ``threshold``: the share of requests answered and the share of those that were right (None when no
    request is answered)."""

    threshold: float
    coverage: float
    precision: float | None
    answered: int
    correct: int


def curve(outcomes: Sequence[Outcome], name: str) -> list[Point]:
    """The precision-vs-coverage curve of statistic ``name``: one point per distinct score of an answered
    request (as a threshold), by falling threshold (rising coverage)."""
    total = len(outcomes)
    scored = sorted(((o.scores[name], o.correct) for o in outcomes if o.answered), reverse=True)
    points: list[Point] = []
    answered = correct = 0
    for i, (score, ok) in enumerate(scored):
        answered += 1
        correct += ok
        if i + 1 < len(scored) and scored[i + 1][0] == score:
            continue  # a threshold keeps every request of the same score
        points.append(Point(score, answered / total, correct / answered, answered, correct))
    return points


def at_target(points: Sequence[Point], target: float) -> Point | None:
    """The point of highest coverage whose precision reaches ``target``, or None."""
    good = [p for p in points if p.precision is not None and p.precision >= target]
    return max(good, key=lambda p: (p.coverage, -p.threshold)) if good else None


def area(points: Sequence[Point]) -> float:
    """Area under the precision-coverage curve (precision held from each point to the next): higher means the
    statistic ranks right suggestions first."""
    out, last = 0.0, 0.0
    for p in points:
        out += (p.coverage - last) * (p.precision or 0.0)
        last = p.coverage
    return out


def summarize(outcomes: Sequence[Outcome], target: float, statistics: Iterable[str] = STATISTICS) -> dict:
    """Per statistic its curve, area and point at the target precision; the best statistic; overall counts."""
    total = len(outcomes)
    answered = sum(o.answered for o in outcomes)
    correct = sum(o.correct for o in outcomes)
    per = {}
    for name in statistics:
        points = curve(outcomes, name)
        hit = at_target(points, target)
        per[name] = {
            "area": round(area(points), 4),
            "at_target": None if hit is None else _point_json(hit),
            "curve": [_point_json(p) for p in points],
        }

    def rank(name: str) -> tuple:
        hit = per[name]["at_target"]
        return (hit["coverage"] if hit else -1.0, per[name]["area"])

    best = max(per, key=rank) if per else None
    return {
        "requests": total,
        "answered": answered,
        "correct": correct,
        "base_precision": round(correct / answered, 4) if answered else None,
        "target_precision": target,
        "statistics": per,
        "best": best,
    }


def _point_json(p: Point) -> dict:
    return {
        "threshold": round(p.threshold, 6),
        "coverage": round(p.coverage, 4),
        "precision": None if p.precision is None else round(p.precision, 4),
        "answered": p.answered,
        "correct": p.correct,
    }


def calibration_of(summary: dict, decoding: dict, data: dict) -> Calibration | None:
    """The calibration to store with the model: the best statistic at the target, or None if no threshold of
    any statistic reaches the target precision."""
    best = summary["best"]
    hit = summary["statistics"][best]["at_target"] if best else None
    if hit is None:
        return None
    measured = {
        "requests": summary["requests"],
        "answered": hit["answered"],
        "coverage": hit["coverage"],
        "precision": hit["precision"],
        "base_precision": summary["base_precision"],
        "area": summary["statistics"][best]["area"],
        **data,
    }
    return Calibration(best, hit["threshold"], summary["target_precision"], decoding, measured)


# --- output ----------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "   -" if x is None else f"{100 * x:4.0f}"


def format_report(summary: dict) -> str:
    """The printed report: per statistic, precision at a ladder of coverages and the point at the target."""
    n, answered = summary["requests"], summary["answered"]
    target = summary["target_precision"]
    lines = [
        f"{n} requests, {answered} answered without a gate ({_pct(answered / n if n else None).strip()}%), "
        f"{summary['correct']} right (precision {_pct(summary['base_precision']).strip()}%)",
        "",
        "precision (%) at coverage (% of requests answered):",
    ]
    top = answered / n if n else 0.0
    levels = [round(level * top, 4) for level in COVERAGE_LEVELS]
    lines.append(f"{'statistic':20} {'area':>5} " + " ".join(f"{_pct(c)}" for c in levels))
    for name, info in summary["statistics"].items():
        points = info["curve"]
        row = []
        for c in levels:  # the first point covering at least c (the threshold that answers that many)
            p = next((p for p in points if p["coverage"] >= c - 1e-9), None)
            row.append(_pct(None if p is None else p["precision"]))
        lines.append(f"{name:20} {info['area']:5.3f} " + " ".join(row))
    lines += ["", f"threshold for precision >= {100 * target:.0f}%:"]
    for name, info in summary["statistics"].items():
        hit = info["at_target"]
        if hit is None:
            lines.append(f"  {name:20} not reached")
        else:
            lines.append(
                f"  {name:20} minConfidence {hit['threshold']:.4f}: coverage {100 * hit['coverage']:.1f}%, "
                f"precision {100 * hit['precision']:.1f}%"
            )
    best = summary["best"]
    hit = summary["statistics"][best]["at_target"] if best else None
    if hit is None:
        lines.append(f"best statistic: {best} (by area); no threshold reaches {100 * target:.0f}% precision")
    else:
        lines.append(
            f"best statistic: {best}: minConfidence {hit['threshold']:.4f} answers {100 * hit['coverage']:.1f}% "
            f"of requests at {100 * hit['precision']:.1f}% precision"
        )
    return "\n".join(lines)


def write_report(path: str | Path, *, config: dict, summary: dict, outcomes: Sequence[Outcome]) -> None:
    """The JSON report: the run's configuration, the summary (curves included) and every request's record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "summary": summary, "records": [asdict(o) for o in outcomes]}
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


def write_plot(path: str | Path, summary: dict) -> None:
    """Precision against coverage, one line per statistic, the target as a dashed line (PNG, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, info in summary["statistics"].items():
        pts = [p for p in info["curve"] if p["precision"] is not None]
        ax.plot(
            [100 * p["coverage"] for p in pts],
            [100 * p["precision"] for p in pts],
            label=f"{name} (area {info['area']:.3f})",
            linewidth=2.0 if name == summary["best"] else 1.0,
        )
    ax.axhline(100 * summary["target_precision"], color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("coverage: requests answered (%)")
    ax.set_ylabel("precision: first line right (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"confidence gate: {summary['requests']} requests")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
