"""Context-cached denoising: the infill adaptation of Fast-dLLM's dual cache.

In an infill request most of the canvas is context (the code before, between and after the holes) and never
changes. The reference decoder still re-reads all of it at every step. Here one full pass computes every layer's
keys and values; the following steps run only the *active* positions (the holes, plus the token just before
each hole, whose output predicts the hole's first token through the logit shift) and attend to the cached
context keys/values. Every ``refresh_every`` steps a full pass brings the context's keys/values up to date with
the tokens revealed so far (0 = never refresh; 1 = every step, identical to the full-canvas denoiser).

The approximation: between refreshes, context keys/values still see the holes as they were at the last full
pass. The span itself always sees fresh keys/values of every span token.

The first pass computes queries (attention output and MLP) of its last layer only at the active positions:
the context's last-layer outputs are never read, only its keys/values are.

With a :class:`~diffucoder_lsp.engine.reuse.ContextStore` the first pass itself may be skipped: context tokens
the previous request of the same stream already encoded take its keys/values, and only the positions it could
not supply (edited text, holes) are computed, as active positions, for the whole request.
"""

from __future__ import annotations

import torch

from ..model.network import DreamModel, positions_from_valid
from .denoiser import shifted_rows
from .reuse import ContextStore


def _gather_kv(kvs, idx: torch.Tensor):
    """Per-layer (k, v) of shape (B, H, L, D) gathered at ``idx`` (B, N) along the sequence axis."""
    out = []
    for k, v in kvs:
        g = idx[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        out.append((k.gather(2, g), v.gather(2, g)))
    return out


def _padded_index(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a boolean (B, L) selection into an index (B, N) padded with 0s and its validity (B, N)."""
    counts = select.sum(1)
    n = int(counts.max()) if select.numel() else 0
    order = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :n]
    valid = torch.arange(n, device=select.device)[None, :] < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid


class CachedContextDenoiser:
    """Denoiser with a context key/value cache; same call signature as ``FullCanvasDenoiser``."""

    def __init__(
        self, model: DreamModel, refresh_every: int = 0, store: ContextStore | None = None
    ) -> None:
        if refresh_every < 0:
            raise ValueError("refresh_every must be >= 0")
        self.model = model
        self.refresh_every = refresh_every
        self.store = store
        self.forward_passes = 0
        self.full_passes = 0
        self.tokens_processed = 0
        self.reused_tokens = 0  # context positions whose keys/values came from the store
        self._ctx_kv = None
        self._since_refresh = 0

    def _setup(self, valid: torch.Tensor, masked: torch.Tensor, fresh: torch.Tensor | None = None) -> None:
        """Fix the active set from the first call's masks: holes, each hole's predecessor, and any context
        whose keys/values are not available (``fresh``)."""
        active = masked.clone()
        active[:, :-1] |= masked[:, 1:]
        if fresh is not None:
            active |= fresh
        active &= valid
        self._positions = positions_from_valid(valid)
        self._act_idx, self._act_valid = _padded_index(active)
        self._ctx_idx, self._ctx_valid = _padded_index(valid & ~active)
        self._active = active
        # canvas position -> slot in the active batch (only meaningful where active)
        self._slot = torch.zeros_like(self._positions)
        rows = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(self._act_idx)
        slots = torch.arange(self._act_idx.shape[1], device=valid.device)[None, :].expand_as(self._act_idx)
        self._slot[rows[self._act_valid], self._act_idx[self._act_valid]] = slots[self._act_valid]

    def _start_from_store(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor) -> int | None:
        """Take the context keys/values from the store when it can supply them; returns the chain length."""
        hit = self.store.lookup(self.model.config, x, valid, masked) if self.store is not None else None
        if hit is None:
            return None
        reused, kvs, chain = hit
        self._setup(valid, masked, fresh=valid & ~reused)
        # a hole's predecessor may be a reused position: it is active now, so drop it from the context block
        keep = (~self._active[0, reused[0]]).nonzero().flatten()
        self._ctx_kv = [
            (k.index_select(2, keep.to(k.device)), v.index_select(2, keep.to(k.device))) for k, v in kvs
        ]
        self.reused_tokens = int(keep.numel())
        self._since_refresh = 1
        return chain

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        self.forward_passes += 1
        first = self._ctx_kv is None
        chain = self._start_from_store(x, valid, masked) if first else None
        if first and chain is None:
            self._setup(valid, masked)
        if (first and chain is None) or (self.refresh_every and self._since_refresh >= self.refresh_every):
            hidden, kvs = self.model.hidden_states(
                x, valid, self._positions, return_kv=True, keep=self._act_idx
            )
            self._ctx_kv = _gather_kv(kvs, self._ctx_idx)
            self._since_refresh = 1
            self.full_passes += 1
            self.tokens_processed += int(valid.sum())
            if first and self.store is not None:
                self.store.save(x, kvs, chain=0)
        else:
            self._since_refresh += 1
            x_act = x.gather(1, self._act_idx)
            pos_act = self._positions.gather(1, self._act_idx)
            out = self.model.hidden_states(
                x_act,
                self._act_valid,
                pos_act,
                extra_kv=self._ctx_kv,
                extra_valid=self._ctx_valid,
                return_kv=first,
            )
            self.tokens_processed += int(self._act_valid.sum())
            hidden = out[0] if first else out
            if first:  # a reused start: remember the stitched context for the next request
                self.store.save(x, self._stitch(x, out[1]), chain=chain)
        rows, cols = shifted_rows(masked)
        return self.model.lm_head(hidden[rows, self._slot[rows, cols]]).float()

    def _stitch(self, x: torch.Tensor, own_kvs) -> list:
        """Complete per-layer keys/values over the canvas: the context block plus the active positions'."""
        out = []
        for (ck, cv), (ak, av) in zip(self._ctx_kv, own_kvs, strict=True):
            ctx, act = self._ctx_idx[0].to(ck.device), self._act_idx[0].to(ck.device)
            shape = (1, ck.shape[1], x.shape[1], ck.shape[3])
            k = ck.new_zeros(shape).index_copy_(2, ctx, ck).index_copy_(2, act, ak)
            v = cv.new_zeros(shape).index_copy_(2, ctx, cv).index_copy_(2, act, av)
            out.append((k, v))
        return out
