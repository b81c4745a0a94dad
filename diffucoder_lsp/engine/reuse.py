"""Cross-request context reuse: keys/values of the previous request's context serve the next one.

While the user types, consecutive completion requests for a document share almost all of their context: the
code before the cursor grows by a character or two (its first lines may scroll out of the window), the code
after it shifts by the same amount. Instead of a fresh full pass over ~1k context tokens per keystroke, the
next request takes the previous request's per-layer keys/values for every context token it can match, and
computes only the rest (the edited tokens, the holes) on top of them, exactly as the steps of a context-cached
request do.

Matching is done on token ids: the new canvas's leading context is looked up in the old canvas (it may start
later if lines scrolled out), and so is its trailing context (found from the end) and the text between its
holes (each gap found after the previous match). A run moved by ``d``
positions gets its cached keys rotated by ``d`` (RoPE rotations compose, so rotating a post-RoPE key by ``d``
gives the key at its new position); values do not depend on position.

This is an approximation of the same kind as the context cache itself: reused keys/values were computed while
the canvas held the old text and masks around the cursor. Three guards keep it bounded: a canvas shorter than
``min_tokens`` always gets a full pass (it is cheap there, and a few stale tokens weigh more in a short
context), a request that would have to compute more than ``max_fresh`` of its canvas afresh does a full pass
instead, and after ``max_chain`` reuses in a row a full pass starts a fresh chain, so staleness cannot
accumulate without limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.config import ModelConfig
from ..model.network import KV, DreamModel, apply_rope, rope_cos_sin

NEEDLE = 16  # tokens used to locate a context run in the previous canvas
# what a stored canvas holds at a position whose keys/values were overwritten after the save: no token id
# (matching runs on code points, and this one is past every vocabulary), so no later request reuses them
OVERWRITTEN = 0x10FFFF


@dataclass
class StoredContext:
    """One request's canvas (1, L) and per-layer keys (post-RoPE) and values (1, KV, L, D) for every position."""

    tokens: list[int]
    kvs: list[KV]
    chain: int  # how many reuses in a row produced this entry (0: it came from a full pass)
    dtype: torch.dtype | None = None  # what a reuse hands out; None: the stored tensors' own (not compacted)


@dataclass(frozen=True)
class ReusePlan:
    """Which new positions take which old positions' keys/values: ``(new_start, old_start, length)`` runs."""

    runs: tuple[tuple[int, int, int], ...]
    reused: int
    fresh: int


def _as_text(ids: list[int]) -> str:
    """Token ids as a string of code points, so str.find / commonprefix do the matching in C."""
    return "".join(map(chr, ids))


def _common_suffix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a[::-1], b[::-1]]))


def plan_reuse(
    old: list[int],
    new: list[int],
    first_mask: int,
    last_mask: int,
    gaps: tuple[tuple[int, int], ...] = (),
) -> ReusePlan:
    """Runs of ``new`` context (before ``first_mask``, in the ``gaps`` [start, end) between holes, after
    ``last_mask``) that occur in ``old``. A gap is looked up by its first ``NEEDLE`` tokens after the previous
    run, so several holes typed around keep the text between them."""
    old_s, new_s = _as_text(old), _as_text(new)
    runs = []
    head = new_s[:first_mask]
    if head:
        at = old_s.find(head[:NEEDLE])
        if at >= 0:
            n = len(os.path.commonprefix([head, old_s[at:]]))
            runs.append((0, at, n))
    after = runs[-1][1] + runs[-1][2] if runs else 0
    for start, end in gaps:
        gap = new_s[start:end]
        if len(gap) < NEEDLE:  # too short to place reliably; recomputing it is cheap
            continue
        at = old_s.find(gap[:NEEDLE], after)
        if at >= 0:
            n = len(os.path.commonprefix([gap, old_s[at:]]))
            runs.append((start, at, n))
            after = at + n
    tail = new_s[last_mask + 1 :]
    if tail:
        needle = tail[-NEEDLE:]
        at = old_s.rfind(needle)
        if at >= 0:
            end = at + len(needle)
            n = _common_suffix(tail, old_s[:end])
            runs.append((len(new) - n, end - n, n))
    reused = sum(r[2] for r in runs)
    return ReusePlan(tuple(runs), reused, len(new) - reused)


class ContextStore:
    """The previous request's context keys/values for one stream of requests (a document, a bench case).

    Not thread-safe: the server runs the model on one thread. ``min_tokens`` is the shortest canvas worth
    reusing for; ``max_fresh`` the largest share of a canvas that may be recomputed on top of reused
    keys/values (above it a full pass is cheaper and exact); ``max_chain`` the number of reuses in a row before
    a full pass refreshes everything.
    """

    def __init__(self, min_tokens: int = 256, max_fresh: float = 0.25, max_chain: int = 16) -> None:
        self.min_tokens = min_tokens
        self.max_fresh = max_fresh
        self.max_chain = max_chain
        self.entry: StoredContext | None = None
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.entry = None

    @property
    def nbytes(self) -> int:
        """Memory held by the stored keys/values."""
        if self.entry is None:
            return 0
        return sum(k.nbytes + v.nbytes for k, v in self.entry.kvs)

    def lookup(
        self,
        cfg: ModelConfig,
        x: torch.Tensor,
        valid: torch.Tensor,
        masked: torch.Tensor,
        exclude: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[KV], int] | None:
        """For a one-row unpadded canvas: (reused (1, L) bool, per-layer (k, v) at the reused positions in
        canvas order, chain length), or None when nothing worth reusing is stored. Positions in ``exclude``
        (1, L) are never reused (the caller computes them anyway), so no copy of their keys/values is made."""
        entry = self.entry
        if entry is None or x.shape[0] != 1 or not bool(valid.all()) or not bool(masked.any()):
            self.misses += entry is not None
            return None
        if entry.chain >= self.max_chain or x.shape[1] < self.min_tokens:
            self.misses += 1
            return None
        cols = masked[0].nonzero().flatten().tolist()
        gaps = tuple((a + 1, b) for a, b in zip(cols, cols[1:], strict=False) if b > a + 1)
        new = x[0].tolist()
        plan = plan_reuse(entry.tokens, new, cols[0], cols[-1], gaps)
        fresh_context = plan.fresh - int(masked.sum())
        if not plan.runs or fresh_context > self.max_fresh * len(new):
            self.misses += 1
            return None
        reused = torch.zeros_like(valid)
        new_idx, old_idx, delta = [], [], []
        for new_start, old_start, n in plan.runs:
            reused[0, new_start : new_start + n] = True
            new_idx.extend(range(new_start, new_start + n))
            old_idx.extend(range(old_start, old_start + n))
            delta.extend([new_start - old_start] * n)
        if exclude is not None and bool((reused & exclude).any()):
            excluded = exclude[0].tolist()
            keep = [i for i, c in enumerate(new_idx) if not excluded[c]]
            new_idx, old_idx, delta = ([a[i] for i in keep] for a in (new_idx, old_idx, delta))
            reused &= ~exclude
        order = torch.tensor(new_idx).argsort()  # the runs come out in canvas order
        src_cpu = torch.tensor(old_idx)[order]
        shift_cpu = torch.tensor(delta)[order][None, :]
        moved = bool((shift_cpu != 0).any())
        kvs = []
        for k, v in entry.kvs:  # layers may sit on different devices (accelerate device maps)
            src = src_cpu.to(k.device)
            dtype = entry.dtype or k.dtype
            k_run = k.index_select(2, src)
            if moved:
                cos, sin = rope_cos_sin(cfg, shift_cpu.to(k.device), torch.float32)
                k_run = apply_rope(k_run.float(), cos, sin)
            kvs.append((k_run.to(dtype), v.index_select(2, src).to(dtype)))
        self.hits += 1
        return reused, kvs, entry.chain + 1

    def compact(self) -> None:
        """Hold the stored keys/values in bf16 (half the memory) until a request reuses them, when they are
        handed out in their own dtype again. The language server compacts the stores of documents other than
        the one being completed: it keeps the same number of them in half the memory. bf16 keys/values are an
        approximation on top of reuse's own (stale context), well inside its guards: tested against the
        uncompacted entry's logits."""
        entry = self.entry
        if (
            entry is None
            or entry.dtype is not None
            or not entry.kvs
            or entry.kvs[0][0].dtype == torch.bfloat16
        ):
            return
        dtype = entry.kvs[0][0].dtype
        entry.kvs = [(k.to(torch.bfloat16), v.to(torch.bfloat16)) for k, v in entry.kvs]
        entry.dtype = dtype

    def holds(self, kvs: list[KV]) -> bool:
        """Whether ``kvs`` share the stored entry's memory (are not a copy of it)."""
        return (
            self.entry is not None and bool(kvs) and self.entry.kvs[0][0].data_ptr() == kvs[0][0].data_ptr()
        )

    def overwritten(self, cols: list[int]) -> None:
        """The stored keys/values at canvas positions ``cols`` are about to be overwritten in place (a
        request's steps write their own into the canvas they were saved from): later requests must not reuse
        them. Marking them costs nothing; copying the entry before the first write would cost a canvas of
        keys/values (48 MB at 1k tokens for the bundled model)."""
        if self.entry is not None:
            for c in cols:
                self.entry.tokens[c] = OVERWRITTEN

    def save(self, x: torch.Tensor, kvs: list[KV], chain: int) -> None:
        """Remember a one-row canvas and its complete per-layer keys/values (batches are not stored)."""
        if x.shape[0] != 1:
            self.entry = None
            return
        self.entry = StoredContext(x[0].tolist(), [(k.detach(), v.detach()) for k, v in kvs], chain)


@torch.no_grad()
def warm_store(
    model: DreamModel, ids: list[int], store: ContextStore, should_stop: Callable[[], bool] = lambda: False
) -> bool:
    """Compute the keys/values of a canvas the next request is expected to have, before it is made.

    The server calls this while the user pauses (a document opened, an edit with no completion after it): the
    next request then starts from these keys/values as it would from a previous request's, and skips its own
    full context pass. When the guess is exact (same canvas, masks included) its context keys/values are the
    ones a cold request computes; otherwise the usual reuse matching and guards apply. ``should_stop`` is
    checked before every layer, so a completion request never waits for more than one layer of this. Returns
    whether the store now holds the canvas (False: stopped, or too short for the store to reuse).
    """
    if len(ids) < store.min_tokens:
        return False
    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    keep = torch.tensor([[len(ids) - 1]], device=x.device)  # the last layer's outputs are never read
    out = model.hidden_states(x, return_kv=True, keep=keep, should_stop=should_stop)
    if out is None:
        return False
    store.save(x, out[1], chain=0)
    return True
