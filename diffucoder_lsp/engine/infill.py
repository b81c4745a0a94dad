"""Infill API: fill one or several holes in a text at once, jointly, in one denoising run.

Holes are written with a marker (``<|mask|>`` by default). The text between holes is tokenized segment by
segment with no special tokens; each hole becomes N mask tokens (a fixed N, or ``auto``: a generous span whose
trailing eos/pad tokens are trimmed after denoising). When the text is longer than the context window, the text
before the first hole and after the last one is cut at line boundaries to fit a prefix/suffix budget; the cut
parts are not sent to the model but are kept in the returned text, so nothing is lost.

:func:`prepare_infill` builds the canvas, :func:`infill_stream` runs the sampler and yields its step events
(for the server, TUI and RL), :func:`infill` drains it.

Token healing (:mod:`.healing`, on in :func:`infill_stream` unless ``exact``): the last token of the text before
each hole moves into the hole as its *lead*, which the hole's first position(s) must spell, so the model sees
the token boundaries of finished code (`` a`` after ``return``, not `` `` then a gap). Callers see the text
they gave: a hole's ``text`` is what comes after the lead, and the filled text is the input with each hole
replaced by its ``text``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Generator, Sequence

import torch

from ..errors import BadInputError
from .blank import hole_constraint
from .canvas import (
    AUTO_LENGTH,
    DEFAULT_MARKER,
    MAX_HOLE_TOKENS,  # noqa: F401 (also imported from here)
    HoleResult,
    InfillCanvas,
    InfillResult,
    Length,
    StepEvent,
    hole_lengths,
    split_holes,
)
from .denoiser import FullCanvasDenoiser
from .healing import back_off
from .sampler import SamplingOptions, denoise

DEFAULT_CONTEXT_TOKENS = 2048  # Dream's tested prompt+output limit; real configs advertise far more

# The canvas, result types and hole syntax live in the torch-free :mod:`.canvas` (a backend's clients build
# them without the model stack); they are exported from here too, where a fill's callers have always found them.
__all__ = [
    "AUTO_LENGTH",
    "DEFAULT_MARKER",
    "HoleResult",
    "InfillCanvas",
    "InfillResult",
    "SamplingOptions",
    "infill",
    "infill_stream",
    "prepare_infill",
    "split_holes",
]


def _cut_lines(text: str, budget: int, encode, keep_end: bool) -> tuple[str, str]:
    """Keep whole lines of ``text`` nearest the hole within ``budget`` tokens. Returns (kept, dropped)."""
    if budget <= 0:
        return "", text
    if len(encode(text)) <= budget:
        return text, ""
    lines = text.splitlines(keepends=True)
    order = reversed(range(len(lines))) if keep_end else range(len(lines))
    used, count = 0, 0
    for i in order:
        n = len(encode(lines[i]))
        if used + n > budget:
            break
        used += n
        count += 1
    while True:
        if keep_end:
            kept = "".join(lines[len(lines) - count :]) if count else ""
            dropped = "".join(lines[: len(lines) - count])
        else:
            kept = "".join(lines[:count])
            dropped = "".join(lines[count:])
        # Per-line token counts can undercount where merges cross a line break: re-check the joined text.
        if count == 0 or len(encode(kept)) <= budget:
            return kept, dropped
        count -= 1


def prepare_infill(
    tokenizer,
    text: str,
    *,
    length: Length | Sequence[Length] = "auto",
    marker: str = DEFAULT_MARKER,
    context_window: int = 2048,
    prefix_share: float = 0.7,
    auto_length: int = AUTO_LENGTH,
    heal: bool = False,
) -> InfillCanvas:
    """Lay out ``text`` as a canvas that fits ``context_window`` tokens.

    ``heal``: back off the last token before each hole into the hole as its lead (:mod:`.healing`). A hole
    keeps its size: the lead's token takes its first position. Off by default here, because a caller that runs
    :func:`~diffucoder_lsp.engine.sampler.denoise` on the canvas itself must also pass the constraint
    (``blank.hole_constraint(tokenizer, [(0, canvas)], nonblank)``) and strip the leads from what it decodes;
    :func:`infill_stream` does both."""
    parts = split_holes(text, marker)
    holes = len(parts) - 1
    lengths = hole_lengths(length, holes)
    sizes = [auto_length if n == "auto" else int(n) for n in lengths]
    middle = [tokenizer.encode(p) for p in parts[1:-1]]
    fixed = sum(sizes) + sum(len(m) for m in middle)
    available = context_window - fixed
    if available < 0:
        raise BadInputError(
            f"the holes and the text between them need {fixed} tokens, more than the context window "
            f"({context_window}); fill fewer holes at once or shorter spans"
        )
    pre_budget = int(available * prefix_share)
    prefix, dropped_pre = _cut_lines(parts[0], pre_budget, tokenizer.encode, keep_end=True)
    pre_ids = tokenizer.encode(prefix)
    suffix, dropped_suf = _cut_lines(parts[-1], available - len(pre_ids), tokenizer.encode, keep_end=False)
    if dropped_pre and not dropped_suf:  # the suffix left room: give it back to the prefix
        prefix, dropped_pre = _cut_lines(
            parts[0], available - len(tokenizer.encode(suffix)), tokenizer.encode, keep_end=True
        )
        pre_ids = tokenizer.encode(prefix)
    segments = [prefix, *parts[1:-1], suffix]
    seg_ids = [pre_ids, *middle, tokenizer.encode(suffix)]
    leads = [""] * holes
    if heal:  # hole j follows segment j: its last token moves into the hole
        for j in range(holes):
            segments[j], seg_ids[j], leads[j] = back_off(tokenizer, segments[j], seg_ids[j])
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for j in range(holes):
        ids.extend(seg_ids[j])
        spans.append((len(ids), len(ids) + sizes[j]))
        ids.extend([tokenizer.mask_id] * sizes[j])
    ids.extend(seg_ids[-1])
    return InfillCanvas(
        ids=ids,
        hole_spans=spans,
        auto=[n == "auto" for n in lengths],
        kept_prefix=dropped_pre,
        kept_suffix=dropped_suf,
        segments=segments,
        leads=leads,
    )


def _hole_result(
    tokenizer, ids: list[int], steps: list[int], conf: list[float], auto: bool, lead: str = ""
) -> HoleResult:
    if auto:  # everything from the first stop token on is padding the model used to end early
        stops = tokenizer.stop_ids
        end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        ids, steps, conf = ids[:end], steps[:end], conf[:end]
    text = tokenizer.decode(ids)
    # The constraint makes the text start with the lead. Were it ever not to, the text is kept whole: the
    # filled text still holds the input unchanged, followed by what the model wrote.
    if lead and text.startswith(lead):
        text = text[len(lead) :]
    return HoleResult(text=text, token_ids=ids, reveal_step=steps, confidence=conf, lead=lead)


def text_to_stop(tok, hole: HoleResult) -> str:
    """A hole's text cut at its first stop token, lead taken off: what an editor shows of a fixed-length hole
    (an ``auto`` hole's ``text`` is already cut there). The language server and the backend's ``cut_at_stop``."""
    ids = hole.token_ids
    end = next((i for i, t in enumerate(ids) if t in tok.stop_ids), len(ids))
    text = tok.decode(ids[:end])
    lead = hole.lead
    return text[len(lead) :] if lead and text.startswith(lead) else text


def infill_stream(
    lm,
    text: str,
    *,
    length: Length | Sequence[Length] = "auto",
    options: SamplingOptions | None = None,
    marker: str = DEFAULT_MARKER,
    max_context_tokens: int | None = None,
    denoiser=None,
    end_early: bool | None = None,
    heal: bool | None = None,
    end_ids: Collection[int] | None = None,
    settle: Sequence[Callable[[str], bool] | None] | None = None,
    nonblank: bool | None = None,
) -> Generator[tuple[InfillCanvas, StepEvent], None, InfillResult]:
    """Fill every hole of ``text``; yields ``(canvas, event)`` per denoising step, returns the result.

    ``end_early``: which holes stop denoising what follows their first revealed stop token (it would be cut):
    None the ``auto`` holes, whose results are cut there (none in ``exact`` mode: the reference decoder stays
    the reference); True every hole (for callers that cut the results themselves, as the server does); False
    none.

    ``end_ids``: the tokens that end a hole for ``end_early`` (default: the tokenizer's stop tokens; a caller
    that keeps only a hole's first line adds the newline tokens).

    ``heal``: token healing at the holes (:mod:`.healing`); None means on unless ``options.exact`` (the
    reference decoder stays token-for-token the reference). The canvas yielded has the leads taken off its
    segments (see :class:`InfillCanvas`); the result's texts are the caller's text, filled.

    ``settle``: per hole, None or a test of the hole's text written so far (from its start to its first masked
    position, lead taken off) that says the caller's cut of it is decided; the hole's other masked positions
    then end as at a stop token (an editor's block that left the cursor's scope, see
    :func:`~diffucoder_lsp.server.postprocess.settled`). Its result is then the text up to that point.

    ``nonblank``: no hole ends before it has written text (:mod:`.blank`); None means on unless
    ``options.exact``. Off for a caller that records the model's raw choices (``analyze``).

    Closing the generator between steps cancels the run (the model is not called again).
    """
    start = time.perf_counter()
    options = options or SamplingOptions()
    tok = lm.tokenizer
    canvas = layout(
        lm,
        text,
        length=length,
        options=options,
        marker=marker,
        max_context_tokens=max_context_tokens,
        heal=heal,
    )
    x = torch.tensor([canvas.ids], dtype=torch.long, device=lm.device)
    denoiser = denoiser or FullCanvasDenoiser(lm.model)
    gen = denoise(
        denoiser,
        x,
        None,
        end_spans=ending_spans(canvas, 0, options, end_early),
        constraint=hole_constraint(tok, [(0, canvas)], not options.exact if nonblank is None else nonblank),
        settle=settle_check(tok, canvas, settle) if settle and any(settle) else None,
        **sampler_args(lm, options, end_ids),
    )
    reveal_step = [-1] * len(canvas.ids)
    confidence = [0.0] * len(canvas.ids)
    steps = 0
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            final = stop.value
            break
        steps = event.step + 1
        for c, p in zip(event.cols.tolist(), event.confidence.tolist(), strict=True):
            reveal_step[c] = event.step
            confidence[c] = p
        yield canvas, event
    return assemble(
        tok,
        canvas,
        final[0].tolist(),
        reveal_step,
        confidence,
        steps=steps,
        elapsed_ms=(time.perf_counter() - start) * 1000,
        forward_passes=getattr(denoiser, "forward_passes", 0),
    )


def settle_check(tok, canvas: InfillCanvas, tests: Sequence[Callable[[str], bool] | None], row: int = 0):
    """The sampler's ``settle`` for one canvas (batch row ``row``): each hole with a test is asked again whenever
    the text from its start to its first masked position grew; once the test says yes, its masked positions
    end."""
    if len(tests) != len(canvas.hole_spans):
        raise ValueError(f"settle has {len(tests)} tests for {len(canvas.hole_spans)} holes")
    pending = {j: 0 for j, test in enumerate(tests) if test is not None}  # hole -> written tokens last asked
    stops = tok.stop_ids

    def check(x: torch.Tensor, _masked: torch.Tensor) -> list[tuple[int, int, int]]:
        out = []
        for j in list(pending):
            a, b = canvas.hole_spans[j]
            still = (x[row, a:b] == tok.mask_id).nonzero()  # ended positions stay masks in x
            first = int(still[0]) if still.numel() else b - a
            if first == b - a:
                del pending[j]  # nothing left to end
                continue
            if first == pending[j]:
                continue
            pending[j] = first
            ids = x[row, a : a + first].tolist()
            if any(t in stops for t in ids):
                del pending[j]  # a stop token ended it already
                continue
            text, lead = tok.decode(ids), canvas.lead(j)
            if lead and text.startswith(lead):
                text = text[len(lead) :]
            if tests[j](text):
                out.append((row, a + first, b))
                del pending[j]
        return out

    return check


def settle_rows(
    tok, canvases: Sequence[InfillCanvas], tests: Sequence[Sequence[Callable[[str], bool] | None] | None]
):
    """The sampler's ``settle`` over a batch: row i's canvas with its per-hole tests (None: none); None when no
    row has a test."""
    checks = [
        settle_check(tok, c, t, i)
        for i, (c, t) in enumerate(zip(canvases, tests, strict=True))
        if t and any(t)
    ]
    if not checks:
        return None
    return lambda x, masked: [span for check in checks for span in check(x, masked)]


def layout(
    lm,
    text: str,
    *,
    length: Length | Sequence[Length] = "auto",
    options: SamplingOptions,
    marker: str = DEFAULT_MARKER,
    max_context_tokens: int | None = None,
    heal: bool | None = None,
    prefix_share: float = 0.7,
) -> InfillCanvas:
    """The canvas :func:`infill_stream` runs for these arguments (a batch lays out each row the same way)."""
    window = min(lm.config.max_position_embeddings, max_context_tokens or DEFAULT_CONTEXT_TOKENS)
    if heal is None:
        heal = not options.exact
    return prepare_infill(
        lm.tokenizer,
        text,
        length=length,
        marker=marker,
        context_window=window,
        heal=heal,
        prefix_share=prefix_share,
    )


def ending_spans(
    canvas: InfillCanvas, row: int, options: SamplingOptions, end_early: bool | None
) -> list[tuple[int, int, int]]:
    """The sampler's ``end_spans`` of one canvas row (see ``end_early`` in :func:`infill_stream`)."""
    return [
        (row, a, b)
        for (a, b), auto in zip(canvas.hole_spans, canvas.auto, strict=True)
        if (auto and not options.exact if end_early is None else end_early)
    ]


def sampler_args(lm, options: SamplingOptions, end_ids: Collection[int] | None = None) -> dict:
    """The arguments of :func:`~diffucoder_lsp.engine.sampler.denoise` that depend on the model only."""
    tok = lm.tokenizer
    return {
        "mask_id": tok.mask_id,
        "options": options,
        "allowed_vocab": min(tok.vocab_size, lm.config.vocab_size),
        "stop_ids": tuple(sorted(tok.stop_ids)),
        "end_ids": None if end_ids is None else tuple(sorted(end_ids)),
    }


def assemble(
    tok,
    canvas: InfillCanvas,
    out_ids: list[int],
    reveal_step: list[int],
    confidence: list[float],
    *,
    steps: int,
    elapsed_ms: float,
    forward_passes: int,
) -> InfillResult:
    """The result of a finished canvas row: each hole's tokens, and the caller's text with the holes filled."""
    holes = [
        _hole_result(tok, out_ids[a:b], reveal_step[a:b], confidence[a:b], auto, canvas.lead(j))
        for j, ((a, b), auto) in enumerate(zip(canvas.hole_spans, canvas.auto, strict=True))
    ]
    pieces = [canvas.kept_prefix]
    for j, hole in enumerate(holes):
        pieces.append(canvas.segments[j] + canvas.lead(j))
        pieces.append(hole.text)
    pieces.append(canvas.segments[-1])
    pieces.append(canvas.kept_suffix)
    return InfillResult(
        text="".join(pieces),
        holes=holes,
        steps=steps,
        elapsed_ms=elapsed_ms,
        forward_passes=forward_passes,
    )


def infill(lm, text: str, **kwargs) -> InfillResult:
    """Fill every hole of ``text`` and return the result (see :func:`infill_stream` for the arguments)."""
    gen = infill_stream(lm, text, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
