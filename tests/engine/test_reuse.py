"""Cross-request context reuse: matching, RoPE re-rotation, equivalence on an unchanged canvas, and the guards."""

from __future__ import annotations

import torch

from diffucoder_lsp.engine.cache import CachedContextDenoiser
from diffucoder_lsp.engine.denoiser import FullCanvasDenoiser
from diffucoder_lsp.engine.infill import infill
from diffucoder_lsp.engine.reuse import ContextStore, plan_reuse, warm_store
from diffucoder_lsp.engine.sampler import SamplingOptions

M = "<|mask|>"
PREFIX = "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fib"
SUFFIX = "\n\n\ndef main():\n    return fibonacci(10)\n"


def canvas(lm, prefix: str, span: int, suffix: str):
    tok = lm.tokenizer
    ids = tok.encode(prefix) + [tok.mask_id] * span + tok.encode(suffix)
    x = torch.tensor([ids])
    return x, torch.ones_like(x, dtype=torch.bool), x == tok.mask_id


# --- matching ----------------------------------------------------------------------------------------------


def test_plan_finds_grown_prefix_and_shifted_suffix():
    old = list(range(100, 140)) + [0] * 5 + list(range(200, 230))
    new = list(range(100, 140)) + [7, 8] + [0] * 5 + list(range(200, 230))
    plan = plan_reuse(old, new, first_mask=42, last_mask=46)
    assert plan.runs == ((0, 0, 40), (47, 45, 30))
    assert plan.reused == 70 and plan.fresh == len(new) - 70


def test_plan_follows_lines_scrolled_out_of_the_window():
    old = list(range(100, 160)) + [0] * 4 + list(range(300, 320))
    new = list(range(110, 163)) + [0] * 4 + list(range(300, 320))  # 10 tokens dropped at the top, 3 typed
    plan = plan_reuse(old, new, first_mask=53, last_mask=56)
    assert plan.runs[0] == (0, 10, 50)  # positions move by -10: keys are re-rotated
    assert plan.runs[1] == (57, 64, 20)


def test_plan_without_common_context_reuses_nothing():
    plan = plan_reuse(list(range(100, 150)), list(range(500, 540)) + [0] * 3, first_mask=40, last_mask=42)
    assert plan.runs == () and plan.reused == 0


# --- keys, values and logits -------------------------------------------------------------------------------


def test_shifted_keys_are_re_rotated_to_their_new_positions(lm):
    """Layer 0 keys/values depend only on the token and its position: reused ones must equal fresh ones."""
    store = ContextStore(min_tokens=0)
    x_old, v_old, m_old = canvas(lm, PREFIX, 6, SUFFIX)
    CachedContextDenoiser(lm.model, store=store)(x_old, v_old, m_old)
    x_new, v_new, m_new = canvas(lm, PREFIX + "onacci(n - 1) + ", 6, SUFFIX)  # suffix moves right
    reused, kvs, chain = store.lookup(lm.model.config, x_new, v_new, m_new)
    assert chain == 1 and int(reused.sum()) > 0
    _, fresh = lm.model.hidden_states(x_new, v_new, return_kv=True)
    cols = reused[0].nonzero().flatten()
    assert cols[-1] == x_new.shape[1] - 1  # the shifted suffix is among the reused positions
    k0, v0 = kvs[0]
    assert torch.allclose(k0, fresh[0][0][:, :, cols], atol=1e-4)
    assert torch.allclose(v0, fresh[0][1][:, :, cols], atol=1e-5)


def test_unchanged_canvas_reuse_gives_the_full_pass_logits(lm):
    x, valid, masked = canvas(lm, PREFIX, 6, SUFFIX)
    store = ContextStore(min_tokens=0)
    CachedContextDenoiser(lm.model, store=store)(x, valid, masked)
    again = CachedContextDenoiser(lm.model, store=store)
    logits = again(x, valid, masked)
    assert again.full_passes == 0 and again.reused_tokens > 0
    assert torch.allclose(logits, FullCanvasDenoiser(lm.model)(x, valid, masked), atol=1e-4)


def test_typing_reuses_the_previous_context_and_stays_close(lm):
    opts = SamplingOptions(temperature=0.0, steps=6)
    store = ContextStore(min_tokens=0)
    first = CachedContextDenoiser(lm.model, store=store)
    infill(lm, PREFIX + M + SUFFIX, length=6, options=opts, denoiser=first)
    assert first.full_passes == 1 and store.entry is not None and store.entry.chain == 0

    typed = PREFIX + "on" + M + SUFFIX
    reusing = CachedContextDenoiser(lm.model, store=store)
    got = infill(lm, typed, length=6, options=opts, denoiser=reusing)
    assert reusing.full_passes == 0 and reusing.reused_tokens > 20
    assert store.hits == 1 and store.entry.chain == 1
    # the same first-step predictions as a fresh request, approximately (stale context keys/values)
    x, valid, masked = canvas(lm, PREFIX + "on", 6, SUFFIX)
    fresh_logits = FullCanvasDenoiser(lm.model)(x, valid, masked)
    reused_logits = CachedContextDenoiser(lm.model, store=ContextStore(min_tokens=0))(x, valid, masked)
    assert torch.allclose(reused_logits, fresh_logits, atol=1e-4)
    chained = CachedContextDenoiser(lm.model, store=store)
    approx = chained(x, valid, masked)
    agree = (approx.argmax(-1) == fresh_logits.argmax(-1)).float().mean()
    assert agree >= 0.5
    assert len(got.holes) == 1 and len(got.holes[0].token_ids) == 6


def test_a_large_change_or_a_long_chain_falls_back_to_a_full_pass(lm):
    x, valid, masked = canvas(lm, PREFIX, 6, SUFFIX)
    store = ContextStore(min_tokens=0, max_chain=2)
    CachedContextDenoiser(lm.model, store=store)(x, valid, masked)
    for expected_full in (0, 0, 1):  # two reuses in a row, then the chain is refreshed
        d = CachedContextDenoiser(lm.model, store=store)
        d(x, valid, masked)
        assert d.full_passes == expected_full
    assert store.entry.chain == 0
    other, ov, om = canvas(lm, "class Point:\n    x = 0\n", 6, "\n    y = 1\n")
    d = CachedContextDenoiser(lm.model, store=store)
    d(other, ov, om)
    assert d.full_passes == 1 and d.reused_tokens == 0


def test_short_canvases_always_get_a_full_pass(lm):
    x, valid, masked = canvas(lm, PREFIX, 6, SUFFIX)
    store = ContextStore(min_tokens=x.shape[1] + 1)
    CachedContextDenoiser(lm.model, store=store)(x, valid, masked)
    d = CachedContextDenoiser(lm.model, store=store)
    d(x, valid, masked)
    assert d.full_passes == 1 and store.hits == 0 and store.misses == 1


def test_batches_and_padding_are_never_reused(lm):
    x, valid, masked = canvas(lm, PREFIX, 6, SUFFIX)
    store = ContextStore(min_tokens=0)
    CachedContextDenoiser(lm.model, store=store)(x, valid, masked)
    xb, vb, mb = x.repeat(2, 1), valid.repeat(2, 1), masked.repeat(2, 1)
    d = CachedContextDenoiser(lm.model, store=store)
    d(xb, vb, mb)
    assert d.full_passes == 1 and store.entry is None  # batches are not stored either


def test_edited_context_is_computed_once_then_joins_the_context(lm):
    """A reused start computes the typed text with the hole; the next steps run only the outputs they read (the
    predecessor of each masked position), and an unchanged canvas still gets the full canvas's logits after."""
    x, valid, masked = canvas(lm, PREFIX, 6, SUFFIX)
    store = ContextStore(min_tokens=0)
    CachedContextDenoiser(lm.model, store=store)(x, valid, masked)
    x2, v2, m2 = canvas(lm, PREFIX + "onacci(n - 1) + fib", 6, SUFFIX)
    d = CachedContextDenoiser(lm.model, store=store)
    d(x2, v2, m2)
    first = d.tokens_processed
    assert d.full_passes == 0 and first > 7  # the typed tokens, the hole and its predecessor
    d(x2, v2, m2)
    assert d.tokens_processed - first == 6  # then the hole's predecessor and its first 5 positions only
    # the typed text's keys/values are the canvas's now: same logits as a fresh full canvas,
    # up to the staleness of the reused context (none here: the reused text saw the same hole)
    approx = d(x2, v2, m2)
    exact = FullCanvasDenoiser(lm.model)(x2, v2, m2)
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.5


def test_plan_keeps_the_text_between_holes():
    between = list(range(300, 340))
    old = list(range(100, 140)) + [0] * 4 + between + [0] * 4 + list(range(200, 230))
    new = list(range(100, 140)) + [7, 8] + [0] * 4 + between + [0] * 4 + list(range(200, 230))
    gap = (46, 86)  # between the two holes of the new canvas
    plan = plan_reuse(old, new, first_mask=42, last_mask=89, gaps=(gap,))
    assert plan.runs == ((0, 0, 40), (46, 44, 40), (90, 88, 30))
    assert plan.fresh == 2 + 8  # the typed tokens and the holes
    short = plan_reuse(old, new, first_mask=42, last_mask=89, gaps=((46, 50),))
    assert len(short.runs) == 2  # a gap shorter than the needle is recomputed


def test_two_holes_typed_around_reuse_the_text_between_them(lm):
    middle = "\n\n\ndef helper(values: list[int]) -> int:\n    total = 0\n    for v in values:\n        total += v\n    return "
    text = PREFIX + M + middle + M + SUFFIX
    typed = PREFIX + "on" + M + middle + M + SUFFIX
    opts = SamplingOptions(temperature=0.0, steps=4)
    store = ContextStore(min_tokens=0)
    infill(lm, text, length=4, options=opts, denoiser=CachedContextDenoiser(lm.model, store=store))
    again = CachedContextDenoiser(lm.model, store=store)
    infill(lm, typed, length=4, options=opts, denoiser=again)
    n_middle = len(lm.tokenizer.encode(middle))
    assert again.full_passes == 0
    # everything but the typed tokens, the holes and the holes' predecessors comes from the store
    assert again.reused_tokens >= len(lm.tokenizer.encode(PREFIX)) - 2 + n_middle - 2


# --- warming the store before a request ---------------------------------------------------------------------


def test_a_warmed_store_serves_the_request_it_guessed_with_no_full_pass(lm):
    """Warming with the exact canvas of the next request: that request makes no full pass, reuses every context
    position, and fills exactly as a cold cached request does (its context keys/values are the same ones)."""
    opts = SamplingOptions(temperature=0.0, steps=6)
    x, valid, masked = canvas(lm, PREFIX, 6, SUFFIX)
    store = ContextStore(min_tokens=0)
    assert warm_store(lm.model, x[0].tolist(), store)
    assert store.entry.chain == 0 and store.entry.tokens == x[0].tolist()
    _, fresh = lm.model.hidden_states(x, valid, return_kv=True)
    for (k, v), (fk, fv) in zip(store.entry.kvs, fresh, strict=True):
        assert torch.allclose(k, fk, atol=1e-5) and torch.allclose(v, fv, atol=1e-5)
    warm = CachedContextDenoiser(lm.model, store=store)
    # the guess must be the canvas the request builds: an unhealed one here (healing moves "fib" into the hole)
    got = infill(lm, PREFIX + M + SUFFIX, length=6, options=opts, denoiser=warm, heal=False)
    cold = CachedContextDenoiser(lm.model)
    want = infill(lm, PREFIX + M + SUFFIX, length=6, options=opts, denoiser=cold, heal=False)
    assert warm.full_passes == 0 and cold.full_passes == 1
    assert warm.reused_tokens == int((~masked).sum()) - 1  # all context but the first hole's predecessor
    assert got.holes[0].token_ids == want.holes[0].token_ids
    # a document warmed without a hole serves a request that opens one in it
    plain = ContextStore(min_tokens=0)
    assert warm_store(lm.model, lm.tokenizer.encode(PREFIX + SUFFIX), plain)
    d = CachedContextDenoiser(lm.model, store=plain)
    d(x, valid, masked)
    assert d.full_passes == 0 and d.reused_tokens > 20 and plain.hits == 1


def test_warming_stops_between_layers_and_skips_short_canvases(lm):
    x, _, _ = canvas(lm, PREFIX, 6, SUFFIX)
    ids = x[0].tolist()
    asked = []

    def stop_at_second_layer() -> bool:
        asked.append(1)
        return len(asked) == 2

    store = ContextStore(min_tokens=0)
    assert not warm_store(lm.model, ids, store, stop_at_second_layer)
    # stopped before its second layer; nothing half-done is kept
    assert len(asked) == 2 and store.entry is None
    assert not warm_store(lm.model, ids, ContextStore(min_tokens=len(ids) + 1))  # never reused: not computed
    asked.clear()
    assert warm_store(lm.model, ids, store, lambda: bool(asked.append(1)))
    assert len(asked) == lm.config.num_hidden_layers


def test_a_missed_store_is_freed_before_the_full_pass_replaces_it(lm):
    """A request the stored canvas cannot serve does a full pass that replaces the entry anyway: the old entry
    is dropped before that pass, not held alongside its keys/values (a canvas of them at the peak)."""
    x, valid, masked = canvas(lm, PREFIX, 6, SUFFIX)
    store = ContextStore(min_tokens=0)
    CachedContextDenoiser(lm.model, store=store)(x, valid, masked)
    assert store.entry is not None
    other, v2, m2 = canvas(
        lm, "import os\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.", 4, "\n"
    )
    during: list = []
    d = CachedContextDenoiser(lm.model, store=store, between_layers=lambda: during.append(store.entry))
    d(other, v2, m2)
    assert d.full_passes == 1 and during and all(e is None for e in during)
    assert store.entry.tokens == other[0].tolist()  # the new canvas is stored after the pass


def test_lookup_leaves_out_the_positions_the_caller_computes_anyway(lm):
    x, valid, masked = canvas(lm, PREFIX, 6, SUFFIX)
    store = ContextStore(min_tokens=0)
    CachedContextDenoiser(lm.model, store=store)(x, valid, masked)
    reused, kvs, _ = store.lookup(lm.model.config, x, valid, masked)
    exclude = torch.zeros_like(valid)
    exclude[0, :3] = True  # e.g. a hole's predecessor
    fewer, fewer_kvs, _ = store.lookup(lm.model.config, x, valid, masked, exclude=exclude)
    assert torch.equal(fewer, reused & ~exclude) and int(fewer.sum()) == int(reused.sum()) - 3
    assert fewer_kvs[0][0].shape[2] == int(fewer.sum())
    torch.testing.assert_close(fewer_kvs[0][0], kvs[0][0][:, :, 3:], atol=0, rtol=0)
