"""Context-cached denoising: the infill adaptation of Fast-dLLM's dual cache.

In an infill request most of the canvas is context (the code before, between and after the holes) and never
changes. The reference decoder still re-reads all of it at every step. Here one full pass computes every layer's
keys and values at every position; the following steps compute only the positions they need (the predecessor of
each masked position, whose output predicts it through the logit shift, and the tokens revealed since the last
step) and attend to the canvas's cached keys/values, writing their own into it in place. Every
``refresh_every`` steps a full pass brings every position's keys/values up to date with the tokens revealed so
far (0 = never refresh; 1 = every step, identical to the full-canvas denoiser).

The approximation: between refreshes, a position keeps the keys/values it last wrote. The context's still see
the holes as they were at the first pass; a revealed token's are computed once, in the step after its reveal,
as an AR decoder with a KV cache computes each token's once (but here they also see the text after the hole).
At blocks of one position (what ``fill`` and the language server run) a step computes one position.

The first pass computes queries (attention output and MLP) of its last layer only at the positions whose
outputs it reads: the context's last-layer outputs are never read, only its keys/values are.

With a :class:`~diffucoder_lsp.engine.reuse.ContextStore` the first pass itself may be skipped: context tokens
the previous request of the same stream already encoded take its keys/values, and only the positions it could
not supply (edited text, holes) are computed, in the first step; after it the edited text is context like any
other.

A batch of canvases (B > 1, padded, as the HTTP backend runs them) works the same way row by row, each row's
positions padded to the longest; a row with nothing left to ask for (finished, or retired by the sampler) is
dropped from every cached tensor at the next call, so the steps after it run the remaining rows only. A
:class:`ContextStore` serves one row: a batch takes one store per row (``stores``, :mod:`.batch_reuse`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..model.network import DreamModel, KVInPlace, KVSlots, positions_from_valid, project
from .denoiser import shifted_rows
from .lookup import draft_after
from .reuse import ContextStore

# tokens a speculative step guesses at most: on a 2-core CPU a pass of the bundled model over 8 positions costs
# ~1.4 times a pass over one (91 against 65-71 ms at 600 tokens of context, with model.network.project)
DRAFT_TOKENS = 7


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


@dataclass
class _Speculation:
    """A speculative step's outputs, waiting for the calls that its guesses would answer."""

    x: torch.Tensor  # the canvas the pass assumed, the guesses already confirmed written in
    valid: torch.Tensor
    first: int  # canvas position of the first guessed token (row 0 is its predecessor)
    drafts: list[int]
    logits: torch.Tensor  # (1 + len(drafts), V): row i predicts position first + i
    kv: list  # per layer, the rows' own (k, v), (1, KV, rows, D)
    used: int = 0  # rows handed out so far


class CachedContextDenoiser:
    """Denoiser with a context key/value cache; same call signature as ``FullCanvasDenoiser``.

    Block decoding asks for one block at a time; moving on to the next block is an ordinary step (its
    positions' predecessors are computed like any others), never a full pass; ``switches`` counts the moves.
    """

    def __init__(
        self,
        model: DreamModel,
        refresh_every: int = 0,
        store: ContextStore | None = None,
        between_layers: Callable[[], object] | None = None,
        draft_tokens: int = DRAFT_TOKENS,
        stores: Sequence[ContextStore | None] | None = None,
    ) -> None:
        """``between_layers``: called before every layer of a full pass (the first step's, and refreshes). The
        language server passes a long job's step-boundary check, so a completion asked for during the first
        pass of a 70-hole Fill All Holes (seconds) is served after one layer, not after the whole pass; what it
        returns is ignored (a job stops between steps, not mid-pass).

        ``draft_tokens``: at blocks of one position, how many tokens a speculative step may guess (looked up in
        the canvas, :mod:`.lookup`); 0 never speculates. The outputs are the same either way (see
        :meth:`_speculate`) up to floating-point rounding; only the number of passes changes.

        ``stores``: one store (or None) per row of a batch, each the stream of requests that row belongs to
        (the HTTP backend's ``X-Request-Group``): the batch's first call starts every row it can from its
        store (:func:`~.batch_reuse.start_batch`). ``store`` is the one-row form."""
        if refresh_every < 0:
            raise ValueError("refresh_every must be >= 0")
        if draft_tokens < 0:
            raise ValueError("draft_tokens must be >= 0")
        self.model = model
        self.between_layers = between_layers
        self._lookahead = model.config.learned_lookahead
        self.refresh_every = refresh_every
        self.store = store
        self.stores = list(stores) if stores is not None else None
        self.draft_tokens = draft_tokens
        self.forward_passes = 0  # passes of the model; a call a speculation answers runs none
        self.speculated = 0  # calls answered by a speculative step's guesses
        self._spec: _Speculation | None = None
        self.full_passes = 0
        self.switches = 0  # steps that moved on to another block (block decoding)
        self.tokens_processed = 0
        self.reused_tokens = 0  # context positions whose keys/values came from the store
        self._ctx_kv = None  # the context block of a reused start's first step (see _start_from_store)
        self._slots = None
        # per-layer keys/values at every canvas position, each as its position last wrote it
        self._kv_full = None
        self._kv_shared = False  # _kv_full is also the store's entry: see _own_kv_full
        self._since_refresh = 0
        self._rows: torch.Tensor | None = None  # a batch's rows the cached tensors hold (B > 1 only)
        self._masked_before: torch.Tensor | None = None  # the last call's masked positions

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
        if self.store is None:
            return None
        hit = self.lookup(self.store, x, valid, masked)
        if hit is None:
            return None
        self._use_hits(valid, masked, [hit])
        return hit[2]

    def lookup(self, store: ContextStore, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor):
        """``store``'s answer for a one-row unpadded canvas (the positions a first call computes anyway are
        never reused), or None; on a miss the store is cleared: the full pass that follows replaces the stored
        canvas anyway, so it is freed now and not held alongside the pass's own keys/values (48 MB each at 1k
        tokens for the bundled model)."""
        hit = store.lookup(self.model.config, x, valid, masked, exclude=self._needed(valid, masked))
        if hit is None:
            store.clear()
        return hit

    def _use_hits(self, valid: torch.Tensor, masked: torch.Tensor, hits: list) -> None:
        """Set up a reused start: row ``i`` takes the context keys/values of ``hits[i]`` (a store lookup's
        answer for that row, unpadded); everything else is active. Each row's reused positions come out of
        :func:`_padded_index` in canvas order, as a lookup hands out their keys/values."""
        needed = self._needed(valid, masked)
        reused = torch.zeros_like(valid)
        for i, (row_reused, _, _) in enumerate(hits):  # (a hole's predecessor is needed, so never reused)
            reused[i, : row_reused.shape[1]] = row_reused[0]
        self._set_active(valid, needed | (valid & ~reused))
        if len(hits) == 1:
            kvs = hits[0][1]
        else:  # one block per layer, each row's reused keys/values first, padded to the most reused
            m = self._ctx_idx.shape[1]
            kvs = []
            for layer in range(len(hits[0][1])):
                k0, v0 = hits[0][1][layer]
                k = k0.new_zeros(len(hits), k0.shape[1], m, k0.shape[3])
                v = v0.new_zeros(len(hits), v0.shape[1], m, v0.shape[3])
                for i, (_, row_kvs, _) in enumerate(hits):
                    rk, rv = row_kvs[layer]
                    k[i, :, : rk.shape[2]] = rk[0]
                    v[i, :, : rv.shape[2]] = rv[0]
                kvs.append((k, v))
        self._set_context(kvs)
        self.reused_tokens = int(reused.sum())
        self._since_refresh = 1

    def start_reused(
        self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor, hits: list
    ) -> torch.Tensor:
        """The first call of a batch whose every row has a store hit (``hits``, one per row): one pass over the
        positions the stores could not supply. Returns the logits as :meth:`__call__` does; saves nothing (the
        caller keeps each row's canvas in its own store)."""
        self.forward_passes += 1
        self._use_hits(valid, masked, hits)
        hidden, own = self._active_pass(
            x, self._act_idx, self._act_valid, self._slots, self._ctx_idx, self._ctx_valid, True
        )
        self._kv_full, self._kv_shared = self._stitch(x, own), False
        self._slots = self._ctx_kv = None
        rows, cols = shifted_rows(masked)
        return project(self.model.lm_head, hidden[rows, self._slot[rows, cols]]).float()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:  # (``store`` serves one row; a batch's rows have ``stores``: batch_reuse.py)
            x, valid, masked = self._live_rows(x, valid, masked)
        if self._spec is not None:  # (a batch down to its last live row speculates as a single canvas)
            answer = self._from_speculation(x, valid, masked)
            if answer is not None:
                return answer
        self.forward_passes += 1
        first = self._kv_full is None
        if first and self.stores is not None:
            if self._rows is not None:  # a batch (its rows may be padded): each row from its own store
                from .batch_reuse import start_batch

                return start_batch(self, x, valid, masked, [self.stores[int(r)] for r in self._rows])
            self.store = self.stores[0]  # a batch of one: the one-row path, speculation included
        revealed = None if first else self._masked_before & ~masked
        self._masked_before = masked
        chain = self._start_from_store(x, valid, masked) if first else None
        refresh = self.refresh_every and self._since_refresh >= self.refresh_every
        if first and chain is None or refresh:
            self._set_active(valid, self._needed(valid, masked))
            hidden, kvs = self.model.hidden_states(
                x, valid, self._positions, return_kv=True, keep=self._act_idx, should_stop=self._layer_hook()
            )
            self._kv_full, self._kv_shared = kvs, first and self.store is not None and x.shape[0] == 1
            self._since_refresh = 1
            self.full_passes += 1
            self.tokens_processed += int(valid.sum())
            if first and self.store is not None:
                self.store.save(x, kvs, chain=0)
            slot = self._slot
        elif first:  # a reused start: the store's context plus the positions it could not supply
            self._since_refresh += 1
            hidden, own = self._active_pass(
                x, self._act_idx, self._act_valid, self._slots, self._ctx_idx, self._ctx_valid, True
            )
            slot = self._slot
            self._kv_full, self._kv_shared = self._stitch(x, own), True
            self.store.save(x, self._kv_full, chain=chain)
            self._slots = self._ctx_kv = None  # steps attend to the canvas's keys/values (_step)
        else:
            guessed = self._speculate(x, valid, masked, revealed)
            if guessed is not None:
                return guessed
            hidden, slot = self._step(x, valid, masked, revealed)
        rows, cols = shifted_rows(masked)
        return project(self.model.lm_head, hidden[rows, slot[rows, cols]]).float()

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
        if self._kv_full is None:  # before the first pass there is nothing cached yet
            return
        names = (
            "_positions",
            "_act_idx",
            "_act_valid",
            "_ctx_idx",
            "_ctx_valid",
            "_active",
            "_slot",
            "_masked_before",
        )
        for name in names:
            setattr(self, name, getattr(self, name).index_select(0, local))
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

    def _own_kv_full(self, cols: torch.Tensor) -> None:
        """Before a step writes the keys/values at canvas positions ``cols`` into the canvas's, when those are
        also the store's entry (one row only): the store must not serve what it did not save. While the store
        still holds them, the written positions are marked overwritten there; otherwise (the store has since
        saved or compacted another entry) they are copied."""
        if not self._kv_shared:
            return
        if self.store is not None and self.store.holds(self._kv_full):
            self.store.overwritten(cols.tolist())
            return
        self._kv_full = [(k.clone(), v.clone()) for k, v in self._kv_full]
        self._kv_shared = False

    def _step(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor, revealed: torch.Tensor):
        """A step over the canvas-ordered keys/values (:class:`KVInPlace`), computing only what it needs: the
        positions whose outputs are read (each masked position's predecessor, logit shift) and the ones revealed
        since the last step (their keys/values are still a mask's). They write their keys/values into the
        canvas's and attend to all of it, so nothing is gathered or appended. Everything else keeps the
        keys/values it last wrote: a revealed token's are computed once, as an AR decoder's are, and a masked
        position whose output no one reads (the last of a block) keeps its mask's. Returns (hidden, slot map).

        Measured against running the whole active set every step (the block and its predecessors, and the old
        set with the new one when it moves): at blocks of one position a step runs one position instead of
        three, which on a CPU turns three-row matrix products (a GEMM packing each weight first) into vector
        products: 110 -> 70 ms a step for the bundled model, with as many right first lines (56 vs 55 of 200
        calibration requests) and as many HumanEval single-line tasks passed (14 vs 12 of 200)."""
        self._since_refresh += 1
        needed = self._needed(valid, masked)
        if bool((needed & ~self._active).any()):
            self.switches += 1  # block decoding moved on (what the bench and the tests count)
        self._active = needed
        run = revealed.clone()
        rows, cols = shifted_rows(masked)
        run[rows, cols] = True
        run &= valid
        idx, idx_valid = _padded_index(run)
        rows, cols, slots = _selected(idx, idx_valid)
        self._own_kv_full(cols)
        self.tokens_processed += int(cols.numel())
        hidden = self.model.hidden_states(
            x.gather(1, idx),
            idx_valid,
            self._positions.gather(1, idx),
            extra_kv=[
                KVInPlace(k, v, rows.to(k.device), cols.to(k.device), slots.to(k.device))
                for k, v in self._kv_full
            ],
            extra_valid=valid,
            extra_positions=self._positions if self._lookahead else None,
        )
        return hidden, _slot_map(idx, idx_valid, valid.shape)

    def _speculate(self, x, valid, masked, revealed) -> torch.Tensor | None:
        """A step that also checks guessed tokens (prompt lookup), or None where it does not apply.

        At blocks of one position a step runs the masked position's predecessor ``p - 1`` alone. When the
        tokens before ``p`` recur elsewhere in the canvas, the tokens that followed them there are guessed for
        ``p, p + 1, ...`` and run in the same pass, row ``i`` at position ``p - 1 + i``. Each row attends
        exactly as the step at a time would have: to the canvas's keys/values, except that rows ``0..i`` stand
        in for positions ``p - 1 .. p - 1 + i`` (their own keys/values), while the guessed positions after
        ``p - 1 + i`` still show the mask keys/values the canvas holds for them. So row ``i``'s logits are
        the ones the step for position ``p + i`` would compute, provided the guesses before it are the tokens
        the sampler actually chose. The sampler is not involved: the calls that follow are answered from these
        rows while the canvas matches the guesses (:meth:`_from_speculation`), and the first call that differs
        runs an ordinary step. Only the answered rows write their keys/values into the canvas's."""
        if self.draft_tokens == 0 or x.shape[0] != 1 or self.refresh_every or int(masked.sum()) != 1:
            return None
        p = int(masked[0].nonzero()[0])
        if p == 0 or not bool(valid[0, p - 1]):
            return None
        others = revealed[0].clone()
        others[p - 1] = False
        if bool(others.any()):  # tokens revealed elsewhere still need a row of their own
            return None
        mask_id = self.model.config.mask_token_id
        holes = (x[0] == mask_id) & valid[0]
        room = 0
        while p + room < x.shape[1] and bool(holes[p + room]) and room < self.draft_tokens:
            room += 1
        drafts = draft_after(x[0].cpu(), (valid[0] & ~holes).cpu(), p - 1, room)  # a lookup, not model work
        if not drafts:
            return None
        n = 1 + len(drafts)
        ids = torch.tensor([[int(x[0, p - 1]), *drafts]], dtype=x.dtype, device=x.device)
        length = x.shape[1]
        allowed = torch.ones(1, 1, n, length + n, dtype=torch.bool, device=x.device)
        for i in range(n):
            allowed[0, 0, i, p - 1 : p + i] = False  # stood in for by rows 0..i
        allowed[0, 0, :, length:] = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        self.tokens_processed += n
        hidden, own = self.model.hidden_states(
            ids,
            torch.ones(1, n, dtype=torch.bool, device=x.device),
            self._positions[:, p - 1 : p - 1 + n],
            extra_kv=[(k, v) for k, v in self._kv_full],
            extra_valid=valid,
            return_kv=True,
            attn_mask=allowed,
            extra_positions=self._positions if self._lookahead else None,
        )
        spec = _Speculation(x.clone(), valid, p, drafts, project(self.model.lm_head, hidden[0]).float(), own)
        self._spec = spec
        self._use_row(spec, 0)
        return spec.logits[:1]

    def _from_speculation(self, x, valid, masked) -> torch.Tensor | None:
        """The next row of the pending speculation when the canvas is what it guessed, else None (dropped)."""
        spec, self._spec = self._spec, None
        i = spec.used + 1
        if i > len(spec.drafts) or x.shape != spec.x.shape or int(masked.sum()) != 1:
            return None
        pos = spec.first + i - 1  # the guess row i takes for granted
        if pos + 1 >= x.shape[1] or not bool(masked[0, pos + 1]) or int(x[0, pos]) != spec.drafts[i - 1]:
            return None
        spec.x[0, pos] = x[0, pos]
        if not (torch.equal(x, spec.x) and torch.equal(valid, spec.valid)):
            return None
        self._masked_before = masked
        self._active = self._needed(valid, masked)
        self.speculated += 1
        self._use_row(spec, i)
        if i < len(spec.drafts):
            self._spec = spec
        return spec.logits[i : i + 1]

    def _use_row(self, spec: _Speculation, i: int) -> None:
        """Row ``i`` of a speculation is now the step it stands for: its keys/values go into the canvas's."""
        pos = spec.first - 1 + i
        self._own_kv_full(torch.tensor([pos]))
        for (k, v), (ok, ov) in zip(self._kv_full, spec.kv, strict=True):
            k[:, :, pos] = ok[:, :, i]
            v[:, :, pos] = ov[:, :, i]
        spec.used = i

    def _stitch(self, x: torch.Tensor, own_kvs) -> list:
        """Complete per-layer keys/values over the canvas: the context block plus the active positions', row by
        row (each row's real entries lead its padded index)."""
        rows = []
        for i in range(x.shape[0]):
            ctx = self._ctx_idx[i][self._ctx_valid[i]]
            act = self._act_idx[i][self._act_valid[i]]
            rows.append((ctx, act))
        out = []
        for (ck, cv), (ak, av) in zip(self._ctx_kv, own_kvs, strict=True):
            shape = (x.shape[0], ck.shape[1], x.shape[1], ck.shape[3])
            k, v = ck.new_zeros(shape), cv.new_zeros(shape)
            for i, (ctx, act) in enumerate(rows):
                ctx, act = ctx.to(ck.device), act.to(ck.device)
                k[i].index_copy_(1, ctx, ck[i, :, : len(ctx)]).index_copy_(1, act, ak[i, :, : len(act)])
                v[i].index_copy_(1, ctx, cv[i, :, : len(ctx)]).index_copy_(1, act, av[i, :, : len(act)])
            out.append((k, v))
        return out
