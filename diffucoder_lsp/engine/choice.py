"""Choosing one token per masked position: nucleus (top-p) and top-k filtering, the draw, and each algorithm's
confidence. The sampler (:mod:`.sampler`) calls :func:`pick_tokens` once per step with the logits of every
eligible position.

On a CPU this is not small next to the network: a cached step of the bundled model is ~25 ms, and choosing
tokens the textbook way (sort the vocabulary for the nucleus, ``torch.multinomial`` for the draw) cost 9-14 ms of
it per 32 positions. So peaked rows are picked from their best 64 candidates, flat rows through a histogram of
log-probabilities, and draws invert the cumulative distribution; each keeps the textbook result (tests compare).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from .options import SamplingOptions


def _top_p_sorted(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering by a full sort of the vocabulary (the definition; slow for a large vocabulary)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cum > top_p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _binned_keep(lp: torch.Tensor, probs: torch.Tensor, top_p: float, bins: int = 1024, span: float = 32.0):
    """The nucleus of each row as a boolean (n, V), from its log-probabilities and probabilities, without sorting
    the vocabulary: a histogram of log-probabilities finds the bin where the cumulative mass crosses ``top_p``;
    bins above it are kept, bins below dropped, and only the tokens of the crossing bin are ordered. Cost is a
    few passes over (n, V), for any shape of row.

    Bins are ``span / bins`` nats wide, measured down from each row's best token; everything further down
    shares the last bin (whose members are then ordered exactly like any other crossing bin).
    """
    # written for few passes over (n, V): on a CPU each costs ~0.1-0.3 ms at 32 x 8192
    n = lp.shape[0]
    top, best = lp.max(-1, keepdim=True)
    scale = bins / span
    b = torch.sub(top * scale, lp, alpha=scale).clamp_(0, bins - 1).long()
    cum = torch.zeros(n, bins, device=lp.device).scatter_add_(1, b, probs).cumsum(-1)
    c = (cum <= top_p).sum(-1, keepdim=True).clamp_(max=bins - 1)  # the crossing bin
    above = torch.where(c > 0, cum.gather(1, (c - 1).clamp(min=0)), torch.zeros_like(top)).squeeze(1)
    # the crossing bin's members as a flat list, ordered by row, then by log-probability descending: a few
    # dozen to a few hundred entries, where a top-k over the masked (n, V) cost 0.7 ms per 32 rows
    rows, cols = (b == c).nonzero(as_tuple=True)
    vals = lp[rows, cols]
    order = vals.argsort(descending=True, stable=True)
    order = order[rows[order].argsort(stable=True)]
    rows, cols, vals = rows[order], cols[order], vals[order]
    wide = torch.float32 if lp.device.type == "mps" else torch.float64  # MPS has no float64
    pv = vals.to(wide).exp()
    run = torch.cat([pv.new_zeros(1), pv.cumsum(0)])  # mass of the members listed before each entry
    counts = torch.bincount(rows, minlength=n)
    row_start = run[counts.cumsum(0) - counts]  # ... before each row's first member
    kept_in_bin = (above.to(wide)[rows] + run[:-1] - row_start[rows] <= top_p) & (vals > float("-inf"))
    keep = b < c
    keep[rows[kept_in_bin], cols[kept_in_bin]] = True
    keep.scatter_(1, best, True)  # the most likely token always survives
    return keep


def _top_p_binned(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering through :func:`_binned_keep`: excluded entries become -inf."""
    lp = logits.float().log_softmax(-1)
    return torch.where(_binned_keep(lp, lp.exp(), top_p), logits, float("-inf"))


NUCLEUS_PROBE = 64  # candidates tried before the histogram


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering of (n, V) logits, fast for peaked and flat rows alike.

    A full sort of an 8k-152k vocabulary per masked position cost more than the network's cached step on the
    CPU (8.6 ms for 32 x 8192). Peaked rows close their nucleus within their top ``NUCLEUS_PROBE`` candidates
    (a small top-k); the others (flat distributions) go through the histogram (~3 ms for 32 x 8192 whatever
    the shape, where probing further and sorting took 14 ms). Same result as the sorted definition, up to
    float rounding at the boundary and the order of tied logits.
    """
    if NUCLEUS_PROBE >= logits.shape[-1]:
        return _top_p_sorted(logits, top_p)
    vals, idx = torch.topk(logits, NUCLEUS_PROBE, dim=-1)
    cum = (vals - torch.logsumexp(logits, dim=-1, keepdim=True)).exp().cumsum(-1)
    closed = cum[:, -1] > top_p
    if not bool(closed.any()):  # all flat: skip building the probed result and copying rows in and out
        return _top_p_binned(logits, top_p)
    keep = torch.ones_like(cum, dtype=torch.bool)
    keep[:, 1:] = cum[:, :-1] <= top_p
    out = torch.full_like(logits, float("-inf")).scatter(-1, idx, vals.masked_fill(~keep, float("-inf")))
    if not bool(closed.all()):
        open_rows = (~closed).nonzero().flatten()
        out[open_rows] = _top_p_binned(logits[open_rows], top_p)
    return out


def filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Nucleus and top-k filtering of (n, V) logits: excluded entries become -inf. The most likely token always
    survives."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0 and logits.numel():
        logits = _top_p(logits.reshape(-1, logits.shape[-1]), top_p).view(logits.shape)
    return logits


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of ``probs`` (n, V)."""
    return -(probs * torch.log(probs + 1e-10)).sum(-1)


class Picked(NamedTuple):
    """One token per row of logits: its id, the confidence under the algorithm, its probability, and (when
    asked for) the entropy of the row's distribution in nats."""

    tokens: torch.Tensor
    confidence: torch.Tensor
    probability: torch.Tensor
    entropy: torch.Tensor | None = None


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of ``probs`` (n, V) by inverting its cumulative sum at a uniform point.

    ``torch.multinomial`` draws an exponential variate for every vocabulary entry of every row: 14 ms for
    48 x 8192 on a 2-core CPU (about as much as the network's cached step) and 266 ms for 48 rows of a 152k
    vocabulary, where one uniform per row and a binary search take 0.3 and 5 ms. The cumulative sum is scaled
    by its own total, so rows need not sum to exactly 1; a token of probability 0 is never chosen (its bucket
    is empty), and float rounding that lands past the end falls back to the row's most likely token.
    """
    cum = probs.float().cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cum[:, -1:]
    tokens = torch.searchsorted(cum, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    empty = probs.gather(-1, tokens[:, None]).squeeze(-1) <= 0
    return torch.where(empty, probs.argmax(-1), tokens)


def _nucleus_candidates(
    logits: torch.Tensor, top_p: float | None, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The filtered distribution of each row as at most ``NUCLEUS_PROBE`` candidates, where it fits in them.

    Returns (candidate logits (n, K), -inf where filtered out; their vocabulary ids (n, K); closed (n,): the
    rows whose whole filtered distribution is among their candidates), or None when no row can be (no filter,
    or a top-k larger than the probe). Same kept tokens as :func:`filter_logits` for the closed rows.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        if top_k > NUCLEUS_PROBE:
            return None
        vals, idx = torch.topk(logits, top_k, dim=-1)
        closed = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        total = torch.logsumexp(vals, dim=-1, keepdim=True)  # top-p applies to the top-k distribution
    elif top_p is not None and top_p < 1.0 and NUCLEUS_PROBE < logits.shape[-1]:
        vals, idx = torch.topk(logits, NUCLEUS_PROBE, dim=-1)
        total = torch.logsumexp(logits, dim=-1, keepdim=True)
        closed = None
    else:
        return None
    if top_p is not None and top_p < 1.0:
        cum = (vals - total).exp().cumsum(-1)
        if closed is None:
            closed = cum[:, -1] > top_p
        keep = torch.ones_like(cum, dtype=torch.bool)
        keep[:, 1:] = cum[:, :-1] <= top_p
        vals = vals.masked_fill(~keep, float("-inf"))
    return vals, idx, closed


def _pick_from(
    logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None, with_entropy: bool
) -> Picked:
    """``pick_tokens`` on already tempered and filtered logits (n, K); tokens are column indices."""
    probs = logits.softmax(-1)
    if opts.temperature > 0:
        tokens = sample_categorical(probs, generator)
        chosen = probs.gather(-1, tokens[:, None]).squeeze(-1)
    else:
        chosen, tokens = probs.max(-1)
    ent = None
    if opts.alg == "topk_margin":
        top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
        conf = top2[:, 0] - (top2[:, 1] if top2.shape[-1] > 1 else 0.0)
    elif opts.alg == "entropy":
        ent = entropy(probs)
        conf = -ent
    else:  # maskgit_plus; origin ignores it
        conf = chosen
    if with_entropy and ent is None:
        ent = entropy(probs)
    return Picked(tokens, conf, chosen, ent if with_entropy else None)


def _pick_open(
    logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None, with_entropy: bool
) -> Picked:
    """``pick_tokens`` for rows filtered by top-p alone whose nucleus is larger than their candidates (flat rows).

    The nucleus is found as a mask (:func:`_binned_keep`) and never applied to the logits: the filtered
    distribution is ``p / z`` over the kept tokens (``z`` their total mass), so its probabilities, entropy
    ``log z - sum(p log p) / z`` and margin come from sums over the kept ``p``, with no second softmax or
    logarithm over the vocabulary.
    """
    lp = logits.log_softmax(-1)
    kept = lp.exp()
    keep = _binned_keep(lp, kept, opts.top_p)
    kept.masked_fill_(~keep, 0.0)
    z = kept.sum(-1)
    tokens = sample_categorical(kept, generator) if opts.temperature > 0 else lp.argmax(-1)
    chosen = kept.gather(-1, tokens[:, None]).squeeze(-1) / z
    ent = None
    if opts.alg == "entropy" or with_entropy:
        ent = z.log() - torch.linalg.vecdot(kept, lp.masked_fill_(~keep, 0.0)) / z
    if opts.alg == "topk_margin":
        top2 = kept.topk(2, dim=-1).values
        conf = (top2[:, 0] - top2[:, 1]) / z
    elif opts.alg == "entropy":
        conf = -ent
    else:  # maskgit_plus; origin ignores it
        conf = chosen
    return Picked(tokens, conf, chosen, ent if with_entropy else None)


def pick_tokens(
    logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None, with_entropy: bool = False
) -> Picked:
    """Choose a token per row of ``logits`` (n, V) from the tempered, filtered distribution.

    A nucleus (top-p, top-k) of a peaked row lies within its ``NUCLEUS_PROBE`` best candidates: such rows are
    picked from those candidates alone (softmax, draw, entropy over 64 values instead of the vocabulary; the
    filtered-out tokens have probability 0 either way), the others from the whole filtered vocabulary. Per step
    of 32 positions over an 8k vocabulary on a 2-core CPU: 6-12 ms for the whole-vocabulary route, about as
    much as the network's cached step.
    """
    logits = logits.float()
    if opts.temperature > 0:
        logits = logits / opts.temperature
    found = _nucleus_candidates(logits, opts.top_p, opts.top_k) if logits.shape[0] else None
    if found is None:
        return _pick_from(filter_logits(logits, opts.top_p, opts.top_k), opts, generator, with_entropy)
    vals, idx, closed = found
    if bool(closed.all()):
        picked = _pick_from(vals, opts, generator, with_entropy)
        return picked._replace(tokens=idx.gather(-1, picked.tokens[:, None]).squeeze(-1))
    # only a nucleus without top-k leaves rows open (a top-k within the probe closes every row)
    if not bool(closed.any()):
        return _pick_open(logits, opts, generator, with_entropy)
    near = _pick_from(vals[closed], opts, generator, with_entropy)
    far = _pick_open(logits[~closed], opts, generator, with_entropy)
    n = logits.shape[0]
    tokens = torch.empty(n, dtype=torch.long, device=logits.device)
    tokens[closed] = idx[closed].gather(-1, near.tokens[:, None]).squeeze(-1)
    tokens[~closed] = far.tokens
    out = [tokens]
    for a, b in (
        (near.confidence, far.confidence),
        (near.probability, far.probability),
        (near.entropy, far.entropy),
    ):
        if a is None:
            out.append(None)
            continue
        merged = torch.empty(n, dtype=a.dtype, device=a.device)
        merged[closed], merged[~closed] = a, b
        out.append(merged)
    return Picked(*out)
