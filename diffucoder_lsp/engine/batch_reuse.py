"""Context reuse in a batch: each row starts from the keys/values its own stream's previous request left.

Why: the HTTP backend batches the requests of many editors, and an editor asks again at every keystroke in one
document, so its consecutive requests share almost all of their context, as the language server's do in
process (:mod:`.reuse`). Without reuse every batched request paid a full context pass (~1 s at 512 tokens for
the bundled model on two CPU cores, the same batched or not) where its steps cost ~50 ms each: the context
passes bounded what batching could gain, and a remote editor paid a full pass per keystroke that an in-process
one did not.

:func:`start_batch` is a batch's first call when its rows carry stores (``CachedContextDenoiser(stores=...)``).
It looks every row up in its store (the same matching and guards as one row: :meth:`.ContextStore.lookup`) and
splits the batch in two: the rows with a hit run one batched pass over the positions their stores could not
supply (edited text, holes), the others one full pass. Each part runs in a fresh denoiser; their keys/values
are merged into the batch's canvas-ordered cache, and the batch steps on as any other. Every row's store then
keeps that row's canvas for its stream's next request: a copy, because the batch's steps write into the merged
cache in place.

A row's result is the one its request would get alone with the same store, up to the rounding of padded
matrix products (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .reuse import ContextStore


def start_batch(
    den, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor, stores: Sequence
) -> torch.Tensor:
    """The first call of ``den`` (a :class:`~.cache.CachedContextDenoiser`) for a batch of rows laid out from
    the left (``valid`` a prefix of each row), ``stores[i]`` row ``i``'s store or None. Returns the logits of
    every masked position in row-major order, as the denoiser's call does, and leaves ``den`` ready to step."""
    lengths = valid.sum(1).tolist()
    hits: list = []
    for i, store in enumerate(stores):
        hit = None
        n = lengths[i]
        if isinstance(store, ContextStore) and bool(valid[i, :n].all()):
            hit = den.lookup(store, x[i : i + 1, :n], valid[i : i + 1, :n], masked[i : i + 1, :n])
        hits.append(hit)
    parts = []
    for reuse in (False, True):
        rows = [i for i, h in enumerate(hits) if (h is not None) == reuse]
        if not rows:
            continue
        sub = type(den)(den.model, den.refresh_every, between_layers=den.between_layers, draft_tokens=0)
        idx = torch.tensor(rows, device=x.device)
        xs, vs, ms = x.index_select(0, idx), valid.index_select(0, idx), masked.index_select(0, idx)
        logits = sub.start_reused(xs, vs, ms, [hits[i] for i in rows]) if reuse else sub(xs, vs, ms)
        parts.append((rows, idx, logits, sub))
        den.full_passes += sub.full_passes
        den.tokens_processed += sub.tokens_processed
        den.reused_tokens += sub.reused_tokens
    den.forward_passes += len(parts) - 1  # (the call itself counted one)
    kvs = _merge([(idx, sub._kv_full) for _, idx, _, sub in parts], x.shape[0])
    for i, store in enumerate(stores):
        if isinstance(store, ContextStore):
            n = lengths[i]
            chain = hits[i][2] if hits[i] is not None else 0
            store.save(
                x[i : i + 1, :n],
                [(k[i : i + 1, :, :n].clone(), v[i : i + 1, :, :n].clone()) for k, v in kvs],
                chain,
            )
    den._kv_full, den._kv_shared = kvs, False
    den._set_active(valid, den._needed(valid, masked))
    den._masked_before = masked
    den._since_refresh = 1
    counts = masked.sum(1).tolist()
    pieces: list = [None] * x.shape[0]
    for rows, _, logits, _ in parts:
        for i, piece in zip(rows, logits.split([counts[i] for i in rows]), strict=True):
            pieces[i] = piece
    return torch.cat(pieces)


def _merge(parts: list, batch: int) -> list:
    """Per-layer (k, v) of the whole batch from the parts' (row indices, per-layer keys/values)."""
    if len(parts) == 1:
        return parts[0][1]  # one part holds every row, in order
    out = []
    for layer in range(len(parts[0][1])):
        k0, v0 = parts[0][1][layer]
        k = k0.new_zeros(batch, *k0.shape[1:])
        v = v0.new_zeros(batch, *v0.shape[1:])
        for idx, kvs in parts:
            pk, pv = kvs[layer]
            k.index_copy_(0, idx.to(k.device), pk)
            v.index_copy_(0, idx.to(v.device), pv)
        out.append((k, v))
    return out
