"""The one denoising sampler: a generator that yields a :class:`StepEvent` per step and returns the final canvas.

Everything that generates text (``diffucoder fill``, the language server, the TUI, evaluation, RL rollouts)
drains this generator. Stopping iteration between steps is how a request is cancelled.

A canvas is a batch of token ids ``x`` (B, L) with a ``valid`` mask (False = padding); positions holding the mask
id (and valid) are still to be generated. Each step asks a :class:`~diffucoder_lsp.engine.denoiser.Denoiser` for
logits at the masked positions only, picks a token and a confidence per position, and reveals some of them:

* ``exact`` reproduces the reference decoder: ``timesteps = linspace(1, 1e-3, steps + 1)``, at step i reveal
  ``k = int(masked * (1 - s / t))`` (all remaining at the last step). Note that k is often 0 in early steps:
  those forward passes are wasted, which is what the reference does.
* otherwise the same number of steps reveals a balanced count, at least one per step, so no pass is wasted.

Confidence per algorithm (higher = surer): ``maskgit_plus`` the chosen token's probability, ``topk_margin``
top-1 minus top-2 probability, ``entropy`` sum p log p; ``origin`` reveals each masked position independently
with probability ``1 - s / t``. With ``alg_temp > 0`` the k positions are sampled from softmax(confidence /
alg_temp) instead of taken greedily (Gumbel top-k, the same distribution as sampling without replacement).

Parallel unmasking (``threshold``): every masked position whose chosen token has probability >= threshold is
revealed, and at least ``tokens_per_step`` per row per step (the most confident ones top the sure ones up), so
the number of steps adapts to how sure the model is while never falling behind a fixed ``tokens_per_step``.

Entropy-bounded unmasking (``entropy_bound``, the rule of the EB-sampler): the eligible positions of a row are
ranked by the algorithm's confidence and the longest leading run is revealed whose entropies, summed, exceed
their largest by at most the bound (in nats), again at least ``tokens_per_step``. Where a threshold asks each
token to be nearly certain on its own, the bound lets a step take many fairly sure tokens or one unsure one:
the error it accepts per step is what is bounded, not the confidence of each token.

Block decoding (``block_size``): a row's masked positions, taken in canvas order across all its holes, are cut
into blocks of ``block_size``; only the first unfinished block is eligible at a step, the later ones wait as mask
tokens. The denoiser is asked for logits at the eligible positions only, so a context-cached denoiser runs a
step over one block instead of every hole (3 holes x 64 tokens: 33 queries a step instead of 195). Blocks go
left to right, as Fast-dLLM's semi-autoregressive blocks; within a block any rule above picks the order.

Left-to-right runs (a ``threshold`` with ``block_size`` 1, :attr:`SamplingOptions.runs`): the model is asked
about the first :data:`RUN_WINDOW` masked positions of a row, in canvas order; the step reveals the first (at
least ``tokens_per_step``) and each next one while its token is at least ``threshold`` sure, stopping at the
first unsure one. The order stays left to right, so a hole still stops as soon as its cut is decided.

Ending early (``end_spans``): a span that its consumer cuts at the first stop token (an ``auto`` hole, a server
completion) stops being denoised past a revealed stop token; see :func:`denoise`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Sequence

import torch

from .canvas import StepEvent  # defined in the torch-free canvas module, which a backend client imports
from .choice import pick_tokens
from .options import ALGORITHMS, RUN_WINDOW, SamplingOptions  # noqa: F401 (also imported from here)

EPS = 1e-3


# --- pure pieces -------------------------------------------------------------------------------------------


def reference_schedule(masked: int, steps: int) -> list[int]:
    """Tokens revealed per step by the reference decoder for one row with ``masked`` masks (no ``origin``)."""
    ts = torch.linspace(1, EPS, steps + 1)
    counts = []
    left = masked
    for i in range(steps):
        t, s = ts[i].item(), ts[i + 1].item()
        k = left if i == steps - 1 else int(left * (1 - s / t))
        counts.append(k)
        left -= k
    return counts


def balanced_count(left: torch.Tensor, steps_left: int) -> torch.Tensor:
    """Reveal ceil(left / steps_left) per row: every step does work and the last one empties the canvas."""
    return torch.div(left + steps_left - 1, steps_left, rounding_mode="floor")


def entropy_bounded_count(
    confidence: torch.Tensor, entropies: torch.Tensor, eligible: torch.Tensor, bound: float
) -> torch.Tensor:
    """Per row of (B, L): how many eligible positions, taken by descending ``confidence``, form the longest run
    whose entropies sum to at most ``bound`` more than their largest one (always >= 1 where any is eligible).

    Adding a position raises the sum by its entropy and the maximum by at most that, so "sum - max" never falls
    along the run and the count is just how many ranks pass the test."""
    score = confidence.masked_fill(~eligible, float("-inf"))
    order = score.argsort(dim=-1, descending=True, stable=True)
    h = entropies.masked_fill(~eligible, 0.0).gather(1, order)
    excess = h.cumsum(1) - h.cummax(1).values
    ranks = torch.arange(h.shape[1], device=h.device).expand_as(h)
    ok = (excess <= bound) & (ranks < eligible.sum(1, keepdim=True))
    return ok.sum(1)


def run_positions(eligible: torch.Tensor, prob: torch.Tensor, threshold: float, least: int) -> torch.Tensor:
    """Boolean (B, L): the left-to-right run each row reveals this step. ``eligible`` marks the positions the
    model was asked about, ``prob`` (one per eligible position, row-major) the chosen tokens' probabilities. The
    run is the row's first ``least`` eligible positions, then each next one, in canvas order, while its token is
    at least ``threshold`` sure."""
    sure = torch.zeros(eligible.shape, dtype=torch.bool, device=eligible.device)
    sure[eligible] = prob >= threshold
    order = eligible.long().cumsum(1)  # 1-based rank of each eligible position
    ok = sure | (order <= least) | ~eligible  # positions the model was not asked about do not break a run
    return ok.long().cumprod(1).bool() & eligible


def choose_positions(
    confidence: torch.Tensor, masked: torch.Tensor, k: torch.Tensor, alg_temp: float, generator
) -> torch.Tensor:
    """Boolean (B, L): the ``k[b]`` most confident masked positions of each row (sampled when alg_temp > 0)."""
    score = confidence.masked_fill(~masked, float("-inf"))
    if alg_temp > 0:
        u = torch.rand(score.shape, generator=generator, device=score.device).clamp_(1e-20, 1.0)
        gumbel = -torch.log(-torch.log(u))
        score = torch.where(masked, score / alg_temp + gumbel, score)
    order = score.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(score.shape[1], device=score.device).expand_as(score)
    take_sorted = ranks < k[:, None]
    take = torch.zeros_like(masked).scatter(1, order, take_sorted)
    return take & masked


# --- the generator -----------------------------------------------------------------------------------------


def denoise(
    denoiser,
    x: torch.Tensor,
    valid: torch.Tensor | None,
    *,
    mask_id: int,
    options: SamplingOptions,
    allowed_vocab: int | None = None,
    banned_ids: tuple[int, ...] = (),
    stop_ids: tuple[int, ...] = (),
    end_spans: Sequence[tuple[int, int, int]] = (),
    constraint=None,
    end_ids: tuple[int, ...] | None = None,
    settle: Callable[[torch.Tensor, torch.Tensor], Sequence[tuple[int, int, int]]] | None = None,
) -> Generator[StepEvent, Collection[int] | None, torch.Tensor]:
    """Denoise ``x`` in place step by step; yields one :class:`StepEvent` per step, returns the final canvas.

    ``allowed_vocab``: ids at or beyond it are never sampled (the logits cover more ids than the tokenizer has).
    ``banned_ids``: never sampled either; the mask id never is. ``stop_ids`` get ``options.eos_penalty``
    subtracted from their logits: long canvases otherwise fill up with eos/pad.
    ``end_spans``: (row, start, end) spans cut at their first stop token afterwards (an ``auto`` hole, a server
    completion). Once a stop token is revealed in one, its still-masked positions after it can only be cut, so
    they are never denoised: reported in the same step's event as that stop token with confidence 0, left as
    mask tokens for the denoiser (what it saw of them so far) and written as the stop token into the returned
    canvas. ``end_ids`` (default ``stop_ids``) are the tokens that end a span: a single-line completion, cut at
    its first line break anyway, also ends at a newline token.
    ``constraint``: per-position allowed tokens (a :class:`~diffucoder_lsp.engine.healing.LeadConstraint`, the
    healed holes' leads), or None. While its ``active`` is True it picks the tokens of a step instead of
    :func:`~diffucoder_lsp.engine.choice.pick_tokens` alone: ``constraint.pick(logits, x, eligible, pick)``
    masks the logits of its positions and calls ``pick``. It works on the logits whatever the denoiser (full
    canvas, context cache, reuse) and before every reveal rule (schedule, threshold, entropy bound, blocks).
    None leaves every step as it was: one attribute test per step.

    ``settle``: called after each step's reveals with the canvas and what is still masked; returns (row, start,
    end) spans whose still-masked positions end now, as a revealed stop token ends them (reported in the same
    step's event with confidence 0, a stop token in the returned canvas). A caller that cuts what the model
    writes (an editor's block ends where it leaves the cursor's scope) ends a hole once the text revealed so far
    already decides the cut: the steps after it would only write what is cut.

    Retiring rows: ``gen.send(rows)`` (a collection of row indices) instead of ``next(gen)`` takes those rows out
    of the run after the step just yielded: they are never eligible again, so no later event reports them, a
    denoiser drops them from its passes (see :mod:`.denoiser`) and the run ends as soon as every row left is
    done. Their rows of the returned canvas keep whatever mask tokens they had left. A batch of requests uses
    this when one of its callers goes away; ``next(gen)`` (sending None) retires nothing.
    """
    x = x.clone()
    if valid is None:
        valid = torch.ones_like(x, dtype=torch.bool)
    masked = (x == mask_id) & valid
    per_row = masked.sum(1)
    max_masked = int(per_row.max()) if x.numel() else 0
    if max_masked == 0:
        return x
    steps = options.num_steps(max_masked, per_row.tolist())
    blocks = None
    runs = options.runs
    if options.block_size is not None and not runs:
        blocks = torch.div(masked.long().cumsum(1) - 1, options.block_size, rounding_mode="floor")
        blocks = blocks.masked_fill(~masked, x.shape[1])  # past every real block
        pace = options.pace(max_masked)
    generator = torch.Generator(device=x.device).manual_seed(options.seed)
    ends = stop_ids if end_ids is None else end_ids
    stop_tensor = torch.tensor(ends, dtype=x.dtype, device=x.device) if end_spans and ends else None
    tracks_ends = stop_tensor is not None or settle is not None
    ended = torch.zeros_like(masked) if tracks_ends else None  # see _end_spans_at_stops
    ended_tokens = torch.full_like(x, mask_id) if tracks_ends else None
    settle_token = (stop_ids or ends or (mask_id,))[0]
    bounded = options.entropy_bound is not None
    ts = torch.linspace(1, EPS, steps + 1).tolist()
    for i in range(steps):
        if not bool(masked.any()):
            break
        t, s = ts[i], ts[i + 1]
        last = i == steps - 1
        if runs:  # the first RUN_WINDOW masked positions of each row, in canvas order
            eligible = masked & (masked.long().cumsum(1) <= RUN_WINDOW)
        elif blocks is not None:  # the first unfinished block of each row
            current = blocks.masked_fill(~masked, x.shape[1]).amin(1, keepdim=True)
            eligible = masked & (blocks == current)
        else:
            eligible = masked
        logits = denoiser(x, valid, eligible)
        if allowed_vocab is not None and allowed_vocab < logits.shape[-1]:
            logits[:, allowed_vocab:] = float("-inf")
        logits[:, [mask_id, *banned_ids]] = float("-inf")
        if options.eos_penalty and stop_ids:
            logits[:, list(stop_ids)] -= options.eos_penalty
        if constraint is not None and constraint.active:
            tokens, conf, prob, ent = constraint.pick(
                logits, x, eligible, lambda lg: pick_tokens(lg, options, generator, with_entropy=bounded)
            )
        else:
            tokens, conf, prob, ent = pick_tokens(logits, options, generator, with_entropy=bounded)
        full_tokens = torch.full_like(x, mask_id)
        full_tokens[eligible] = tokens
        full_conf = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        full_conf[eligible] = conf
        left = eligible.sum(1)
        if options.alg == "origin":
            if last:
                take = masked.clone()
            else:
                draw = torch.rand(x.shape, generator=generator, device=x.device)
                take = masked & (draw < 1 - s / t)
        elif runs and not last:
            take = run_positions(eligible, prob, options.threshold, options.tokens_per_step)
        else:
            thresholded = options.threshold is not None and not last  # the sure ones, then a top-up
            if last:
                k = left
            elif options.exact:
                # the reference's int(n * (1 - s / t)) in Python floats (float64 tensors fail on MPS)
                k = torch.tensor([int(n * (1 - s / t)) for n in left.tolist()], device=x.device)
            elif bounded:
                full_ent = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
                full_ent[eligible] = ent
                k = entropy_bounded_count(full_conf, full_ent, eligible, options.entropy_bound)
                k = k.clamp(min=options.tokens_per_step).minimum(left)
            elif thresholded:
                sure = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
                sure[eligible] = prob >= options.threshold
                # rows reveal at least tokens_per_step positions: the sure ones, topped up by the most confident
                k = (options.tokens_per_step - sure.sum(1)).clamp(min=0).minimum(left)
            elif blocks is not None:
                k = left.clamp(max=pace)
            else:
                k = balanced_count(left, steps - i)
                if options.steps is None:  # keep the pace when positions ended early (end_spans)
                    k = k.clamp(min=options.tokens_per_step).minimum(left)
            take = choose_positions(
                full_conf, eligible & ~sure if thresholded else eligible, k, options.alg_temp, generator
            )
            if thresholded:
                take |= sure
        x[take] = full_tokens[take]
        if stop_tensor is not None:
            now = _end_spans_at_stops(masked, take, full_tokens, full_conf, end_spans, stop_tensor)
            ended |= now
            ended_tokens[now] = full_tokens[now]
            take = take | now  # done and reported, but still masks in x until the end
        if settle is not None:
            still = masked & ~take
            now = _end_settled(settle(x, still), still, full_tokens, full_conf, settle_token)
            ended |= now
            ended_tokens[now] = settle_token
            take = take | now
        masked &= ~take
        rows, cols = take.nonzero(as_tuple=True)
        retire = yield StepEvent(
            step=i,
            total_steps=steps,
            rows=rows,
            cols=cols,
            tokens=full_tokens[rows, cols],
            confidence=full_conf[rows, cols],
            remaining=int(masked.sum()),
        )
        if retire:  # rows whose caller left (see the docstring): nothing of them is denoised any more
            masked[torch.tensor(sorted(retire), dtype=torch.long, device=x.device)] = False
    if ended is not None:
        x[ended] = ended_tokens[ended]
    return x


def _end_settled(spans, still, full_tokens, full_conf, token: int) -> torch.Tensor:
    """The still-masked positions of the ``settle`` spans, ended with ``token`` (confidence 0)."""
    ended = torch.zeros_like(still)
    for r, a, b in spans:
        ended[r, a:b] = still[r, a:b]
    if bool(ended.any()):
        full_tokens[ended] = token
        full_conf[ended] = 0.0
    return ended


def _end_spans_at_stops(masked, take, full_tokens, full_conf, spans, stops) -> torch.Tensor:
    """The masked positions of ``spans`` that a stop token revealed in this step (``take``) ends: the ones after
    it. Their ``full_tokens`` become that stop token and ``full_conf`` 0.

    The denoiser keeps seeing them as mask tokens, as it would have until they were revealed (measured: 160 of
    183 fills identical to denoising them all, edit similarity -0.2 points; writing the stop token into the
    canvas at once gave -0.7); the stop token goes into the canvas when denoising ends."""
    new_stop = take & torch.isin(full_tokens, stops)
    ended = torch.zeros_like(take)
    if not bool(new_stop.any()):
        return ended
    for r, a, b in spans:
        hits = new_stop[r, a:b].nonzero()
        if hits.numel() == 0:
            continue
        # the first stop token revealed now (an earlier revealed one already ended what follows it)
        c = a + int(hits[0])
        after = masked[r, c + 1 : b] & ~take[r, c + 1 : b]
        if bool(after.any()):
            cols = (c + 1) + after.nonzero().flatten()
            full_tokens[r, cols] = int(full_tokens[r, c])
            full_conf[r, cols] = 0.0
            ended[r, cols] = True
    return ended


def run_to_end(gen: Generator[StepEvent, object, torch.Tensor]) -> tuple[list[StepEvent], torch.Tensor]:
    """Drain a sampler generator: all its events and its return value."""
    events: list[StepEvent] = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value
