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
not supply (edited text, holes) are computed, as active positions, in the first step; after it the edited text
joins the cached context like any other and the steps run only the positions asked for.

Block decoding asks for one block of the holes at a time; moving to the next block is one step over both
blocks (see :class:`CachedContextDenoiser`), never a full pass.

A batch of canvases (B > 1, padded, as the HTTP backend runs them) works the same way row by row; a row with
nothing left to ask for (finished, or retired by the sampler) is dropped from every cached tensor at the next
call, so the steps after it run the remaining rows only. A :class:`ContextStore` serves one row only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..model.network import DreamModel, KVInPlace, KVSlots, positions_from_valid
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


def _selected(idx: torch.Tensor, idx_valid: torch.Tensor):
    """(row, canvas position, slot) of every real entry of the padded index ``idx``."""
    rows = torch.arange(idx.shape[0], device=idx.device)[:, None].expand_as(idx)
    slots = torch.arange(idx.shape[1], device=idx.device)[None, :].expand_as(idx)
    return rows[idx_valid], idx[idx_valid], slots[idx_valid]


def _slot_map(idx: torch.Tensor, idx_valid: torch.Tensor, shape) -> torch.Tensor:
    """Canvas position -> slot in the padded index ``idx`` (only meaningful where selected)."""
    slot = torch.zeros(shape, dtype=torch.long, device=idx.device)
    rows, cols, slots = _selected(idx, idx_valid)
    slot[rows, cols] = slots
    return slot


class CachedContextDenoiser:
    """Denoiser with a context key/value cache; same call signature as ``FullCanvasDenoiser``.

    The active set is fixed by the first call (the positions asked for, their predecessors, anything without
    keys/values yet). When a later call asks for positions outside it (block decoding moving on to its next
    block) one step runs the old and the new active positions together: the old ones' final keys/values join
    the context, the new ones become the active set, and no extra full pass is made.
    """

    def __init__(
        self,
        model: DreamModel,
        refresh_every: int = 0,
        store: ContextStore | None = None,
        between_layers: Callable[[], object] | None = None,
    ) -> None:
        """``between_layers``: called before every layer of a full pass (the first step's, and refreshes). The
        language server passes a long job's step-boundary check, so a completion asked for during the first
        pass of a 70-hole Fill All Holes (seconds) is served after one layer, not after the whole pass; what it
        returns is ignored (a job stops between steps, not mid-pass)."""
        if refresh_every < 0:
            raise ValueError("refresh_every must be >= 0")
        self.model = model
        self.between_layers = between_layers
        self._lookahead = model.config.learned_lookahead
        self.refresh_every = refresh_every
        self.store = store
        self.forward_passes = 0
        self.full_passes = 0
        self.switches = 0  # steps that moved the active set (block decoding)
        self.tokens_processed = 0
        self.reused_tokens = 0  # context positions whose keys/values came from the store
        self._ctx_kv = None
        self._kv_full = None  # per-layer keys/values at every canvas position, current outside the active set
        self._kv_shared = False  # _kv_full is also the store's entry: copy before writing into it
        self._since_refresh = 0
        self._rows: torch.Tensor | None = None  # a batch's rows the cached tensors hold (B > 1 only)

    def _layer_hook(self) -> Callable[[], bool] | None:
        if self.between_layers is None:
            return None
        call = self.between_layers

        def hook() -> bool:
            call()
            return False  # never abandons the pass

        return hook

    @staticmethod
    def _needed(valid: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The positions a call must compute: the ones asked for and each one's predecessor (logit shift)."""
        active = masked.clone()
        active[:, :-1] |= masked[:, 1:]
        return active & valid

    def _set_active(self, valid: torch.Tensor, active: torch.Tensor) -> None:
        self._positions = positions_from_valid(valid)
        self._act_idx, self._act_valid = _padded_index(active)
        self._ctx_idx, self._ctx_valid = _padded_index(valid & ~active)
        self._active = active
        self._slot = _slot_map(self._act_idx, self._act_valid, valid.shape)

    def _start_from_store(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor) -> int | None:
        """Take the context keys/values from the store when it can supply them; returns the chain length."""
        hit = self.store.lookup(self.model.config, x, valid, masked) if self.store is not None else None
        if hit is None:
            return None
        reused, kvs, chain = hit
        self._set_active(valid, self._needed(valid, masked) | (valid & ~reused))
        # a hole's predecessor may be a reused position: it is active now, so drop it from the context block
        keep = (~self._active[0, reused[0]]).nonzero().flatten()
        self._set_context(
            [(k.index_select(2, keep.to(k.device)), v.index_select(2, keep.to(k.device))) for k, v in kvs]
        )
        self.reused_tokens = int(keep.numel())
        self._since_refresh = 1
        return chain

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        self.forward_passes += 1
        if x.shape[0] > 1:  # (a store neither serves nor keeps batches: see ContextStore.lookup)
            x, valid, masked = self._live_rows(x, valid, masked)
        first = self._ctx_kv is None
        chain = self._start_from_store(x, valid, masked) if first else None
        refresh = self.refresh_every and self._since_refresh >= self.refresh_every
        moved = False
        if first and chain is None:
            self._set_active(valid, self._needed(valid, masked))
        elif not first:
            needed = self._needed(valid, masked)
            moved = bool((needed & ~self._active).any())
            if moved and refresh:
                self._set_active(valid, needed)
        if (first and chain is None) or refresh:
            hidden, kvs = self.model.hidden_states(
                x, valid, self._positions, return_kv=True, keep=self._act_idx, should_stop=self._layer_hook()
            )
            self._kv_full, self._kv_shared = kvs, first and self.store is not None
            self._set_context(_gather_kv(kvs, self._ctx_idx))
            self._since_refresh = 1
            self.full_passes += 1
            self.tokens_processed += int(valid.sum())
            if first and self.store is not None:
                self.store.save(x, kvs, chain=0)
            slot = self._slot
        elif not first and x.shape[0] == 1:
            hidden, slot = self._in_place_step(x, valid, needed, moved)
        elif moved:
            hidden, slot = self._switch(x, valid, needed)
        else:
            self._since_refresh += 1
            out = self._active_pass(
                x, self._act_idx, self._act_valid, self._slots, self._ctx_idx, self._ctx_valid, first
            )
            hidden = out[0] if first else out
            slot = self._slot
            if first:  # a reused start: remember the stitched context for the next request
                self._kv_full, self._kv_shared = self._stitch(x, out[1]), True
                self.store.save(x, self._kv_full, chain=chain)
                needed = self._needed(valid, masked)
                if bool((self._active & ~needed).any()):
                    # edited context (and text between holes) needed one pass for its keys/values, as any
                    # context does: from now on it is context, and steps run only what they are asked for
                    self._set_active(valid, needed)
                    self._set_context(_gather_kv(self._kv_full, self._ctx_idx))
        rows, cols = shifted_rows(masked)
        return self.model.lm_head(hidden[rows, slot[rows, cols]]).float()

    def _live_rows(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor):
        """The batch rows that still have positions to compute; rows that dropped out since the last call are
        removed from every cached tensor for good (a row's masked positions only ever shrink)."""
        if self._rows is None:
            self._rows = masked.any(1).nonzero().flatten()
        else:
            keep = masked.index_select(0, self._rows).any(1)
            if not bool(keep.all()):
                self._keep_rows(keep.nonzero().flatten())
        if self._rows.numel() == x.shape[0]:
            return x, valid, masked
        return x[self._rows], valid[self._rows], masked[self._rows]

    def _keep_rows(self, local: torch.Tensor) -> None:
        """Keep rows ``local`` (indices into the rows held) of every per-row tensor."""
        self._rows = self._rows[local]
        if self._ctx_kv is None:  # before the first pass there is nothing cached yet
            return
        for name in ("_positions", "_act_idx", "_act_valid", "_ctx_idx", "_ctx_valid", "_active", "_slot"):
            setattr(self, name, getattr(self, name).index_select(0, local))
        m = self._ctx_kv[0][0].shape[2] if self._ctx_kv else 0
        self._slots = [
            KVSlots(s.k.index_select(0, local.to(s.k.device)), s.v.index_select(0, local.to(s.k.device)))
            for s in self._slots
        ]
        self._ctx_kv = [(s.k[:, :, :m], s.v[:, :, :m]) for s in self._slots]
        if self._kv_full is not None:
            self._kv_full = [
                (k.index_select(0, local.to(k.device)), v.index_select(0, local.to(k.device)))
                for k, v in self._kv_full
            ]
            self._kv_shared = False  # fresh copies now

    def _set_context(self, ctx_kv: list) -> None:
        """Hold the context block in buffers with room for the active positions after it (``KVSlots``)."""
        n = self._act_idx.shape[1]
        self._slots = [
            KVSlots(
                torch.cat([k, k.new_empty(*k.shape[:2], n, k.shape[3])], 2),
                torch.cat([v, v.new_empty(*v.shape[:2], n, v.shape[3])], 2),
            )
            for k, v in ctx_kv
        ]
        m = ctx_kv[0][0].shape[2] if ctx_kv else 0
        self._ctx_kv = [(s.k[:, :, :m], s.v[:, :, :m]) for s in self._slots]

    def _active_pass(self, x, idx, idx_valid, ctx_kv, ctx_idx, ctx_valid, return_kv: bool):
        """Hidden states (and with ``return_kv`` their own keys/values) of the positions ``idx`` over a context."""
        self.tokens_processed += int(idx_valid.sum())
        return self.model.hidden_states(
            x.gather(1, idx),
            idx_valid,
            self._positions.gather(1, idx),
            extra_kv=ctx_kv,
            extra_valid=ctx_valid,
            return_kv=return_kv,
            extra_positions=self._positions.gather(1, ctx_idx) if self._lookahead else None,
        )

    def _own_kv_full(self) -> None:
        """Copy the canvas's keys/values before a step writes into them when they are also the store's entry:
        the store keeps the keys/values of the canvas as it was saved."""
        if self._kv_shared:
            self._kv_full = [(k.clone(), v.clone()) for k, v in self._kv_full]
            self._kv_shared = False

    def _in_place_step(self, x: torch.Tensor, valid: torch.Tensor, needed: torch.Tensor, moved: bool):
        """A step of one row over the canvas-ordered keys/values (:class:`KVInPlace`): the active positions (and
        when the set moves, the new ones with them) write their keys/values into the canvas's and attend to
        all of it, so nothing is gathered or appended. The positions that leave the active set keep what they
        wrote, which is what :meth:`_switch` moves into the context for a batch. Returns (hidden, slot map).

        A row's context block (``_slots``) is built once, after the first pass, and not kept up to date after
        that: one row's steps never read it again."""
        self._since_refresh += 1
        run = self._active | needed if moved else self._active
        cols = run[0].nonzero().flatten()
        own = torch.ones(1, cols.numel(), dtype=torch.bool, device=x.device)
        self._own_kv_full()
        self.tokens_processed += int(cols.numel())
        hidden = self.model.hidden_states(
            x[:, cols],
            own,
            self._positions[:, cols],
            extra_kv=[KVInPlace(k, v, cols.to(k.device)) for k, v in self._kv_full],
            extra_valid=valid,
            extra_positions=self._positions if self._lookahead else None,
        )
        slot = _slot_map(cols[None], own, valid.shape)
        if moved:
            self.switches += 1
            self._set_active(valid, needed)
        return hidden, slot

    def _switch(self, x: torch.Tensor, valid: torch.Tensor, needed: torch.Tensor):
        """One step over the old and the new active positions; the old ones' keys/values join the context."""
        self.switches += 1
        self._since_refresh += 1
        union = self._active | needed
        idx, idx_valid = _padded_index(union)
        ctx_idx, ctx_valid = _padded_index(valid & ~union)
        hidden, own = self._active_pass(
            x, idx, idx_valid, _gather_kv(self._kv_full, ctx_idx), ctx_idx, ctx_valid, True
        )
        rows, cols, slots = _selected(idx, idx_valid)
        self._own_kv_full()
        for (fk, fv), (k, v) in zip(self._kv_full, own, strict=True):
            r, c, sl = rows.to(fk.device), cols.to(fk.device), slots.to(fk.device)
            fk.transpose(1, 2)[r, c] = k.transpose(1, 2)[r, sl]
            fv.transpose(1, 2)[r, c] = v.transpose(1, 2)[r, sl]
        self._set_active(valid, needed)
        self._set_context(_gather_kv(self._kv_full, self._ctx_idx))
        return hidden, _slot_map(idx, idx_valid, valid.shape)

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
