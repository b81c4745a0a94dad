"""Several infill requests denoised together: one padded canvas batch, one forward pass per step for all of them.

A diffusion model batches naturally: every request is a canvas of context and mask tokens, and the sampler
(:func:`~diffucoder_lsp.engine.sampler.denoise`) already takes a batch of canvases with a padding mask. The
HTTP backend gathers the requests of many editors and runs them here, so a GPU (or a CPU's wide matmuls) does
the work of several requests for little more than the cost of one.

:func:`infill_batch` is :func:`~diffucoder_lsp.engine.infill.infill_stream` for many rows. Each row is laid out
exactly as ``infill_stream`` lays out its one canvas (:func:`~diffucoder_lsp.engine.infill.layout`), gets the
same end spans and token-healing constraint, and its result is assembled by the same function, so a batch of
one is ``infill_stream`` token for token. A row's result is ready the step its last position is revealed, not
when the longest row of the batch ends: a short completion does not wait for a long fill that shares its batch.

Which requests may share a batch: the sampler takes one :class:`SamplingOptions` (and one set of end tokens)
for all rows, and a few schedules depend on the longest row (:func:`schedule_key`); everything else (texts,
lengths, holes, which holes end early, healing) is per row. With a temperature above 0 the random draws of a
batch differ from those of the same request run alone: batched sampling is equivalent, not identical.

Leaving: the generator takes ``send(rows)`` to retire rows (a client that went away, a request superseded by a
newer one); the sampler stops denoising them and the denoisers drop them from their passes (see
:mod:`.sampler` and :mod:`.denoiser`). Closing the generator stops the whole batch between steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Generator, Sequence
from dataclasses import dataclass

import torch

from .blank import hole_constraint
from .denoiser import FullCanvasDenoiser
from .infill import InfillCanvas, InfillResult, assemble, ending_spans, sampler_args, settle_rows
from .options import SamplingOptions
from .sampler import denoise

PAD_ID = 0  # padding is never attended to (valid = False): its token id does not matter


@dataclass(frozen=True)
class BatchRow:
    """One request of a batch: its laid-out canvas and which of its holes end at their first stop token
    (``end_early`` as in :func:`~diffucoder_lsp.engine.infill.infill_stream`)."""

    canvas: InfillCanvas
    end_early: bool | None = None
    settle: tuple[Callable[[str], bool] | None, ...] | None = None  # per hole, as ``infill_stream`` takes it


@dataclass(frozen=True)
class RowStep:
    """What one denoising step revealed in one row (canvas positions of that row), and the row's result when
    this step finished it."""

    row: int
    step: int
    total_steps: int
    positions: tuple[int, ...]
    tokens: tuple[int, ...]
    confidences: tuple[float, ...]
    remaining: int  # masked positions of this row left after the step
    result: InfillResult | None = None


def schedule_key(options: SamplingOptions, canvas: InfillCanvas) -> int | None:
    """What else rows must share to be batched under ``options`` without changing any row's result: the masked
    count where the schedule is computed from the longest row (exact and origin decoding without ``steps``
    space their steps by it; block decoding with ``steps`` paces by it), else None (any rows)."""
    fixed_steps = options.steps is not None
    by_longest = (not fixed_steps and (options.exact or options.alg == "origin")) or (
        options.block_size is not None and fixed_steps and not options.adaptive
    )
    return sum(b - a for a, b in canvas.hole_spans) if by_longest else None


def infill_batch(
    lm,
    rows: Sequence[BatchRow],
    *,
    options: SamplingOptions,
    denoiser=None,
    end_ids: Collection[int] | None = None,
) -> Generator[list[RowStep], Collection[int] | None, list[InfillResult | None]]:
    """Denoise ``rows`` as one batch; yields, per step, a :class:`RowStep` for every row still running, and
    returns every row's result (None for a retired row). ``send(rows)`` retires rows after the step just
    yielded. ``denoiser``: a fresh one per batch (default: full-canvas passes); never one with a context store.
    """
    if not rows:
        return []
    start = time.perf_counter()
    tok = lm.tokenizer
    canvases = [r.canvas for r in rows]
    width = max(len(c.ids) for c in canvases)
    x = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, c in enumerate(canvases):
        x[i, : len(c.ids)] = torch.tensor(c.ids, dtype=torch.long)
        valid[i, : len(c.ids)] = True
    denoiser = denoiser or FullCanvasDenoiser(lm.model)
    gen = denoise(
        denoiser,
        x.to(lm.device),
        valid.to(lm.device),
        end_spans=[s for i, r in enumerate(rows) for s in ending_spans(r.canvas, i, options, r.end_early)],
        constraint=hole_constraint(tok, list(enumerate(canvases)), nonblank=not options.exact),
        settle=settle_rows(tok, canvases, [r.settle for r in rows]),
        **sampler_args(lm, options, end_ids),
    )
    ids = [list(c.ids) for c in canvases]
    reveal = [[-1] * len(c.ids) for c in canvases]
    conf = [[0.0] * len(c.ids) for c in canvases]
    left = [sum(1 for t in c.ids if t == tok.mask_id) for c in canvases]
    results: list[InfillResult | None] = [None] * len(rows)
    running = {i for i, n in enumerate(left) if n}
    for i in set(range(len(rows))) - running:  # nothing to denoise (cannot happen for a laid-out canvas)
        results[i] = _finish(tok, canvases[i], ids[i], reveal[i], conf[i], 0, start, denoiser)
    retire: Collection[int] | None = None
    try:
        while running:
            try:
                event = gen.send(retire)
            except StopIteration:
                break
            per_row = event.per_row(len(rows))
            out = []
            for r in sorted(running):
                revealed = per_row[r]
                for c, t, p in revealed:
                    ids[r][c], reveal[r][c], conf[r][c] = t, event.step, p
                left[r] -= len(revealed)
                result = None
                if left[r] <= 0:
                    running.discard(r)
                    result = results[r] = _finish(
                        tok, canvases[r], ids[r], reveal[r], conf[r], event.step + 1, start, denoiser
                    )
                out.append(
                    RowStep(
                        row=r,
                        step=event.step,
                        total_steps=event.total_steps,
                        positions=tuple(c for c, _, _ in revealed),
                        tokens=tuple(t for _, t, _ in revealed),
                        confidences=tuple(p for _, _, p in revealed),
                        remaining=max(left[r], 0),
                        result=result,
                    )
                )
            retire = yield out
            if retire:
                retire = {r for r in retire if r in running}
                running -= retire
    finally:
        gen.close()
    return results


def _finish(tok, canvas, ids, reveal, conf, steps: int, start: float, denoiser) -> InfillResult:
    return assemble(
        tok,
        canvas,
        ids,
        reveal,
        conf,
        steps=steps,
        elapsed_ms=(time.perf_counter() - start) * 1000,
        forward_passes=getattr(denoiser, "forward_passes", 0),
    )
