"""Run infilling tasks through a fill function, execute the filled programs in the sandbox, score pass@1.

The fill function is injected (``fill_fn(prefix, suffix, length) -> str``) so the harness can be checked
without a model: an oracle filler that returns the truth must score 100% (else the task construction or the
sandbox is broken) and an empty filler must score near 0% (else the tests do not test the hole). The model's
fill function (:func:`model_fill_fn`) wraps the engine's ``infill`` with ``prefix + "<|mask|>" + suffix``.

``length`` is what the engine gets for the hole: in ``oracle`` mode the true middle's token count (from
``count_tokens``; without one, its character count, which fake fillers ignore anyway), in ``auto`` mode the
string ``"auto"``, leaving the engine to pick and trim.

Pipelining: the model runs in the calling thread (torch is not made faster by more Python threads), while
each filled program is handed to a small thread pool that waits on its sandbox process, so executing task i
overlaps with filling task i+1. pass@1 here is the fraction of tasks whose single completion passes.

Judging (:mod:`diffucoder_lsp.judge`): a task passes when the values its filled program computes for the calls
of the test's asserts, reported from the sandbox, compare equal to the expected values **here**, never because
its process exited with status 0 (a fill of ``import os; os._exit(0)`` would pass that). 159 of the 164 HumanEval
tests split this way completely; the other 5 (random inputs, helper variables) keep what does not split as code
run in-process, a verdict the program could forge, counted per task (``judged_by``, ``forgeable``) and in the
summary (``by_values``, ``forgeable``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ..judge import Plan, Verdict, judge_run, plan_check
from .humaneval_infill import InfillTask

log = logging.getLogger(__name__)

FillFn = Callable[[str, str, "int | str"], str]
LENGTH_MODES = ("oracle", "auto")
MASK = "<|mask|>"


@dataclass
class TaskRecord:
    """One task under one length mode: what was filled, whether the program passed, and why not."""

    task_id: str
    split: str
    length_mode: str
    length: int | str
    middle: str
    fill: str
    passed: bool = False
    reason: str = ""
    exact_match: bool = False
    fill_ms: float = 0.0
    run_s: float = 0.0
    judged_by: str = ""  # "values" (compared here), "mixed" or "in-process" (forgeable); "" when not run
    forgeable: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def parse_length_modes(value: str) -> list[str]:
    """``oracle``, ``auto`` or ``both``."""
    from ..errors import BadInputError

    if value == "both":
        return list(LENGTH_MODES)
    if value not in LENGTH_MODES:
        raise BadInputError(f"unknown length mode {value!r}: choose oracle, auto or both")
    return [value]


def summarize(records: Sequence[TaskRecord]) -> dict[str, dict]:
    """pass@1 (percent) per ``split/length_mode``, plus ``all/<mode>`` when several splits were run."""
    groups: dict[str, list[TaskRecord]] = {}
    for r in records:
        groups.setdefault(f"{r.split}/{r.length_mode}", []).append(r)
    if len({r.split for r in records}) > 1:
        for r in records:
            groups.setdefault(f"all/{r.length_mode}", []).append(r)
    out = {}
    for key, rs in groups.items():
        n = len(rs)
        out[key] = {
            "n": n,
            "passed": sum(r.passed for r in rs),
            "pass@1": round(100.0 * sum(r.passed for r in rs) / n, 2),
            "exact_match": round(100.0 * sum(r.exact_match for r in rs) / n, 2),
            "mean_fill_ms": round(sum(r.fill_ms for r in rs) / n, 1),
            "by_values": sum(r.judged_by == "values" for r in rs),
            "forgeable": sum(r.forgeable for r in rs),
        }
    return out


class Progress:
    """tqdm on stderr when installed, else a plain stderr line every few seconds. Thread-safe ``update``."""

    def __init__(self, total: int, desc: str, enabled: bool = True, metric: str = "pass@1") -> None:
        self.total, self.desc, self.enabled, self.metric = total, desc, enabled, metric
        self.done = self.passed = 0
        self._lock = threading.Lock()
        self._last = 0.0
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="task", dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def update(self, passed: bool) -> None:
        with self._lock:
            self.done += 1
            self.passed += int(passed)
            if not self.enabled:
                return
            rate = 100.0 * self.passed / self.done
            if self._bar is not None:
                self._bar.set_postfix_str(f"{self.metric} {rate:.1f}%", refresh=False)
                self._bar.update(1)
            elif time.monotonic() - self._last > 2.0 or self.done == self.total:
                self._last = time.monotonic()
                print(
                    f"{self.desc}: {self.done}/{self.total} {self.metric} {rate:.1f}%",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def evaluate_tasks(
    tasks: Iterable[InfillTask],
    fill_fn: FillFn,
    *,
    length_modes: Sequence[str] = ("oracle",),
    count_tokens: Callable[[str], int] | None = None,
    workers: int = 2,
    timeout_s: float = 5.0,
    memory_mb: int | None = 512,
    progress: bool = True,
    desc: str = "humaneval-infill",
) -> list[TaskRecord]:
    """Fill every task under every length mode, run the programs, and return one record per (task, mode).

    A fill function that raises is scored as a failed task with the error as its reason (logged), so one bad
    input does not lose a long run; KeyboardInterrupt still stops it.
    """
    tasks = list(tasks)
    plans: dict[tuple[str, str], Plan] = {}
    for t in tasks:
        if (t.test, t.entry_point) not in plans:
            plans[(t.test, t.entry_point)] = plan_check(t.test, t.entry_point)
    jobs = [(t, m) for m in length_modes for t in tasks]
    bar = Progress(len(jobs), desc, enabled=progress)
    records: list[TaskRecord] = []
    futures: list[Future | None] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sandbox")
    try:
        for task, mode in jobs:
            if mode == "oracle":
                length: int | str = count_tokens(task.middle) if count_tokens else len(task.middle)
            else:
                length = "auto"
            rec = TaskRecord(task.task_id, task.split, mode, length, task.middle, "")
            records.append(rec)
            t0 = time.perf_counter()
            try:
                rec.fill = fill_fn(task.prefix, task.suffix, length)
            except Exception as exc:
                log.warning("fill failed for %s: %s", task.task_id, exc)
                rec.reason = f"fill error: {type(exc).__name__}: {exc}"
                futures.append(None)
                bar.update(False)
                continue
            finally:
                rec.fill_ms = round((time.perf_counter() - t0) * 1000.0, 1)
            rec.exact_match = rec.fill.strip() == task.middle.strip()
            plan = plans[(task.test, task.entry_point)]
            fut = pool.submit(
                judge_run, task.solution(rec.fill), plan, timeout_s=timeout_s, memory_mb=memory_mb
            )
            fut.add_done_callback(lambda f: bar.update(bool(f.result()[0][0].passed)))
            futures.append(fut)
        for rec, fut in zip(records, futures, strict=True):
            if fut is None:
                continue
            verdicts, res = fut.result()
            verdict: Verdict = verdicts[0]
            rec.passed, rec.reason = verdict.passed, verdict.reason or "ok"
            rec.run_s = round(res.duration_s, 3)
            rec.judged_by, rec.forgeable = verdict.judged_by, verdict.forgeable
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return records


def oracle_fill_fn(tasks: Iterable[InfillTask]) -> FillFn:
    """A filler that returns each task's true middle (looked up by prefix and suffix)."""
    truth = {(t.prefix, t.suffix): t.middle for t in tasks}
    return lambda prefix, suffix, length: truth[(prefix, suffix)]


def empty_fill_fn(prefix: str, suffix: str, length: int | str) -> str:
    """A filler that leaves the hole empty: the harness's negative control."""
    return ""


def model_fill_fn(
    lm,
    options=None,
    *,
    max_context_tokens: int | None = None,
    marker: str = MASK,
    cache: bool = False,
    single_line: bool = False,
) -> FillFn:
    """Fill holes with the engine: ``infill(lm, prefix + marker + suffix, length=...)``, first hole's text.

    ``cache``: decode through the context key/value cache, as ``fill``'s fast decoding and the server do.
    ``single_line``: the fill is cut at its first line break, the rule :func:`ar_fill_fn` applies to the AR
    baseline on the single-line split. (Its holes start a line, so the healed first token re-writes the newline
    before them: a newline token cannot end such a hole, but the hole stops once a written line follows that
    newline: :func:`first_line_settled`.)
    """
    from ..engine.infill import SamplingOptions, infill

    opts = options if options is not None else SamplingOptions()

    def fill(prefix: str, suffix: str, length: int | str) -> str:
        denoiser = None
        if cache:
            from ..engine.cache import CachedContextDenoiser

            denoiser = CachedContextDenoiser(lm.model)
        result = infill(
            lm,
            prefix + marker + suffix,
            length=length,
            options=opts,
            marker=marker,
            max_context_tokens=max_context_tokens,
            denoiser=denoiser,
            settle=[first_line_settled] if single_line else None,
        )
        text = result.holes[0].text
        if single_line and text.strip():
            text = text.lstrip("\n").split("\n", 1)[0]
        return text

    return fill


def first_line_settled(written: str) -> bool:
    """The single-line cut (the first line after any leading newlines) of ``written`` is that of every longer
    text: a line with code in it is complete."""
    rest = written.lstrip("\n")
    return "\n" in rest and rest.split("\n", 1)[0].strip() != ""


def ar_fill_fn(
    lm, *, single_line: bool, max_new_tokens: int = 64, max_context_tokens: int | None = None
) -> FillFn:
    """The prefix-only autoregressive baseline: greedy left-to-right decoding with the causal mask, no suffix.

    This is what a plain AR code model does at the cursor, so an infill model must beat it by reading the
    suffix. The prompt boundary is healed as the engine heals holes: a prefix ending in a newline (and any
    indentation after it) is cut back to before the newline, the model writes the newline and indentation as
    it would (BPE's usual newline+indent token), and that re-written lead is dropped from the fill. Stops after
    ``length`` tokens (oracle; one more when the lead was cut) or ``max_new_tokens`` (auto), and with
    ``single_line`` also at the end of the first line written (the single-line completion an editor shows).
    """
    import torch

    from ..engine.autoregressive import ar_steps

    tok = lm.tokenizer
    limit = max_context_tokens or 2048

    def fill(prefix: str, suffix: str, length: int | str) -> str:
        del suffix  # the baseline never reads it
        body = prefix.rstrip(" \t")
        cut = body.endswith("\n") and len(body) > 1
        prompt = body[:-1] if cut else prefix
        lead = prefix[len(prompt) :]  # what the model must re-write first ("\n" + indentation, or "")
        ids = tok.encode(prompt)[-limit:]
        budget = (length + 1 if cut else length) if isinstance(length, int) else max_new_tokens
        x = torch.tensor([ids], dtype=torch.long, device=lm.device)
        out: list[int] = []
        text = ""
        for step in ar_steps(lm.model, x, budget):
            token = int(step)
            if token == tok.eos_id:
                break
            out.append(token)
            text = tok.decode(out)
            if single_line and "\n" in text[len(lead) :].lstrip("\n"):
                break
        if text.startswith(lead):
            text = text[len(lead) :]
        elif cut and text.startswith("\n"):
            text = text[1:]
        if single_line and text.strip():
            text = text.lstrip("\n").split("\n", 1)[0]
        return text

    return fill


def ranked_fill_fn(
    lm,
    *,
    width: int | None = None,
    prior_weight: float | None = None,
    max_new_tokens: int = 64,
    max_context_tokens: int | None = None,
) -> FillFn:
    """One-line fills ranked by the suffix (:mod:`diffucoder_lsp.engine.ranking`): ``width`` candidate lines
    from the model decoding causally, the one the code after the hole follows best. An adapted model (the
    bundled default) ranks as its base (:mod:`diffucoder_lsp.model.base_view`). A line's budget is ``length``
    tokens (oracle) or ``max_new_tokens`` (auto), as for :func:`ar_fill_fn`."""
    from ..engine import ranking

    def fill(prefix: str, suffix: str, length: int | str) -> str:
        result = ranking.rank_with(
            lm,
            prefix,
            suffix,
            width=width or ranking.WIDTH,
            max_tokens=length if isinstance(length, int) else max_new_tokens,
            prior_weight=ranking.PRIOR_WEIGHT if prior_weight is None else prior_weight,
            max_context_tokens=max_context_tokens or ranking.MAX_CONTEXT_TOKENS,
        )
        return result.best.text

    return fill


def token_counter(lm) -> Callable[[str], int]:
    """The oracle length: how many tokens the loaded model's tokenizer makes of the true middle."""
    return lambda text: len(lm.tokenizer.encode(text))


def format_summary(summary: dict[str, dict], title: str = "pass@1") -> str:
    """A small fixed-width table for the terminal."""
    head = f"{'split/length':<26} {'n':>5} {'passed':>7} {title:>8} {'exact':>7} {'fill ms':>9}"
    lines = [head + f" {'by value':>8} {'forgeable':>9}"]
    for key, s in summary.items():
        lines.append(
            f"{key:<26} {s['n']:>5} {s['passed']:>7} {s['pass@1']:>7.1f}% {s['exact_match']:>6.1f}% "
            f"{s['mean_fill_ms']:>9.1f} {s.get('by_values', 0):>8} {s.get('forgeable', 0):>9}"
        )
    lines.append(
        "by value: tasks judged by comparing reported values here; forgeable: tasks whose verdict also needed "
        "test code run in the program's own process"
    )
    return "\n".join(lines)


def write_json(path, *, config: dict, summary: dict, records: Sequence) -> None:
    """The result file: the run's configuration, the summary and one record per task, written atomically."""
    import json
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = {
        "config": config,
        "summary": summary,
        "records": [r.to_dict() if hasattr(r, "to_dict") else r for r in records],
    }
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
