"""Fast inference: the context cache, threshold decoding on a real model, the AR baseline, and the bench."""

from __future__ import annotations

import json

import pytest
import torch

from diffucoder_lsp.engine.autoregressive import ar_generate
from diffucoder_lsp.engine.cache import CachedContextDenoiser
from diffucoder_lsp.engine.denoiser import FullCanvasDenoiser
from diffucoder_lsp.engine.infill import infill
from diffucoder_lsp.engine.sampler import SamplingOptions, denoise, run_to_end

M = "<|mask|>"
TEXT = f"def f(x):\n    return {M}\n\n\nclass A:\n    {M}\n\nprint(f(1))\n"


def fill_ids(lm, denoiser, **opts):
    res = infill(lm, TEXT, length=6, options=SamplingOptions(temperature=0.0, **opts), denoiser=denoiser)
    return [h.token_ids for h in res.holes], res


def test_cache_refreshed_every_step_equals_full_canvas(lm):
    full, _ = fill_ids(lm, FullCanvasDenoiser(lm.model), steps=12)
    cached_den = CachedContextDenoiser(lm.model, refresh_every=1)
    cached, _ = fill_ids(lm, cached_den, steps=12)
    assert cached == full
    assert cached_den.full_passes == 12


def test_cache_logits_match_full_pass_right_after_a_refresh_and_close_between(lm):
    """Step 2 with refresh every 2 steps is a full pass: logits equal. Without refresh they are close."""
    tok = lm.tokenizer
    ids = tok.encode("a = 1\nb = ") + [tok.mask_id] * 5 + tok.encode("\nc = 3\n")
    x = torch.tensor([ids])
    valid = torch.ones_like(x, dtype=torch.bool)
    masked = x == tok.mask_id
    full = FullCanvasDenoiser(lm.model)
    cache = CachedContextDenoiser(lm.model, refresh_every=0)
    assert torch.allclose(cache(x, valid, masked), full(x, valid, masked), atol=1e-5)
    # reveal two tokens, then compare: the cached context still sees the old masks, so only approximately equal
    x2 = x.clone()
    pos = masked.nonzero(as_tuple=True)[1][:2]
    x2[0, pos] = torch.tensor(tok.encode("xy")[:1] * 2)
    m2 = x2 == tok.mask_id
    approx = cache(x2, valid, m2)
    exact = full(x2, valid, m2)
    assert approx.shape == exact.shape
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.5
    assert cache.full_passes == 1 and cache.forward_passes == 2
    assert cache.tokens_processed < len(ids) + 8  # the second pass ran the span and its predecessor only


def test_cache_with_padded_batch_reveals_everything(lm):
    tok = lm.tokenizer
    rows = [tok.encode("x = ") + [tok.mask_id] * 4 + tok.encode("\n"), [tok.mask_id] * 2 + tok.encode("y\n")]
    width = max(map(len, rows))
    x = torch.full((2, width), tok.pad_id)
    valid = torch.zeros(2, width, dtype=torch.bool)
    for r, ids in enumerate(rows):
        x[r, : len(ids)] = torch.tensor(ids)
        valid[r, : len(ids)] = True
    opts = SamplingOptions(temperature=0.0, threshold=0.5)
    events, final = run_to_end(
        denoise(CachedContextDenoiser(lm.model), x, valid, mask_id=tok.mask_id, options=opts)
    )
    assert not ((final == tok.mask_id) & valid).any()
    assert sum(len(e.cols) for e in events) == 6


def test_threshold_with_cache_on_real_model_fills_all(lm):
    den = CachedContextDenoiser(lm.model, refresh_every=4)
    holes, res = fill_ids(lm, den, threshold=0.9)
    assert all(len(h) == 6 for h in holes)
    assert res.forward_passes == den.forward_passes <= 12


def test_ar_baseline_is_causal_and_matches_uncached_decoding(lm):
    prompt = torch.randint(10, lm.tokenizer.vocab_size, (1, 15), generator=torch.Generator().manual_seed(0))
    tokens, passes = ar_generate(lm.model, prompt, 5)
    assert passes == 5 and tokens.shape == (1, 5)
    seq = prompt.clone()
    for _ in range(5):
        hidden = lm.model.hidden_states(seq, causal=True)
        seq = torch.cat([seq, lm.model.lm_head(hidden[:, -1]).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, seq[:, 15:])
    # causal: changing a later token leaves earlier outputs unchanged
    a = lm.model.hidden_states(seq, causal=True)
    changed = seq.clone()
    changed[0, -1] = (changed[0, -1] + 1) % lm.tokenizer.vocab_size
    b = lm.model.hidden_states(changed, causal=True)
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_bench_runs_end_to_end(tiny_ckpt, capsys):
    from diffucoder_lsp.cli import main

    argv = [
        "bench",
        "--model",
        str(tiny_ckpt),
        "--repeat",
        "1",
        "--cases",
        "1",
        "--contexts",
        "128",
        "--spans",
        "8",
        "--holes",
        "1,3",
        "--block-size",
        "4",
        "--entropy-bound",
        "0",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert {r["config"] for r in rows} == {
        "reference",
        "cache",
        "block",
        "parallel",
        "all",
        "bounded",
        "runs",
        "reuse",
        "ar",
    }
    assert out["meta"]["block_size"] == 4 and out["meta"]["entropy_bound"] == 0.0
    assert {r["workload"] for r in rows} == {"ctx128/span8/holes1", "ctx128/span8/holes3"}
    for r in rows:
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] and r["forward_passes"] >= 1
        if r["config"] == "reference":
            assert r["vs_reference"] == pytest.approx(1.0)
        if r["config"] == "ar":
            assert r["exact_match"] is None and r["vs_ar"] == pytest.approx(1.0)
        else:
            assert 0.0 <= r["exact_match"] <= 1.0
    ref = [r for r in rows if r["config"] == "reference" and r["workload"].endswith("holes1")][0]
    assert ref["forward_passes"] == 8  # one token per step, exact schedule
    block = [r for r in rows if r["config"] == "block" and r["workload"].endswith("holes3")][0]
    assert block["forward_passes"] == 24  # one token per step, block by block
    # a bound of 0 nats still takes runs of certain tokens, never fewer than one a step
    bounded = [r for r in rows if r["config"] == "bounded" and r["workload"].endswith("holes3")][0]
    assert 1 <= bounded["forward_passes"] <= 24


def test_bench_cli_knows_every_configuration():
    from diffucoder_lsp import bench
    from diffucoder_lsp.commands import bench as command

    assert command.CONFIGS == bench.CONFIGS
    assert command.BLOCK_SIZE == bench.BLOCK_SIZE and command.ENTROPY_BOUND == bench.ENTROPY_BOUND
    assert command.DRAFT_TOKENS == bench.DRAFT_TOKENS


def test_typed_earlier_moves_the_first_hole_back():
    from diffucoder_lsp.bench import typed_earlier

    assert typed_earlier(f"abcdef{M}xyz{M}!", 3) == f"abc{M}xyz{M}!"
    assert typed_earlier(f"ab{M}x", 3) == f"{M}x"


def test_workloads_too_long_for_the_window_are_shortened_to_fit(lm):
    from diffucoder_lsp.bench import build_workloads

    text = "x = 1\n" * 600
    wls = build_workloads(
        lm.tokenizer, text, contexts=(512,), spans=(16,), holes=(1, 3), cases=1, max_tokens=512
    )
    assert [w.name for w in wls] == ["ctx496/span16/holes1", "ctx464/span16/holes3"]
    for w in wls:
        assert w.context + w.span * w.holes <= 512
        assert all(len(t) == 16 for case in w.cases for t in case.truths)
    assert build_workloads(lm.tokenizer, text, contexts=(512,), spans=(16,), holes=(1,), max_tokens=200) == []


def _three_holes(lm, span=5):
    tok = lm.tokenizer
    ids = (
        tok.encode("a = 1\nb = ")
        + [tok.mask_id] * span
        + tok.encode("\nc = 3\nd = ")
        + [tok.mask_id] * span
        + tok.encode("\ne = 5\nf = ")
        + [tok.mask_id] * span
        + tok.encode("\nprint(a)\n")
    )
    x = torch.tensor([ids])
    return x, torch.ones_like(x, dtype=torch.bool), x == tok.mask_id


def test_cache_moving_its_active_set_on_an_unchanged_canvas_gives_full_canvas_logits(lm):
    """Asking for one hole, then the next, then the last (as block decoding does) switches the active set
    without a full pass; with nothing revealed in between every answer equals the full canvas's."""
    x, valid, masked = _three_holes(lm)
    order = masked.long().cumsum(1) - 1
    full = FullCanvasDenoiser(lm.model)
    cache = CachedContextDenoiser(lm.model, refresh_every=0)
    for hole in range(3):
        ask = masked & (order // 5 == hole)
        assert torch.allclose(cache(x, valid, ask), full(x, valid, ask), atol=1e-4)
    assert cache.full_passes == 1 and cache.switches == 2 and cache.forward_passes == 3


def test_block_decoding_with_cache_runs_one_full_pass_and_fewer_tokens(lm):
    text = f"a = 1\nb = {M}\nc = 3\nd = {M}\ne = 5\nf = {M}\nprint(a)\n"

    def run(block, refresh=0, den=None):
        den = den or CachedContextDenoiser(lm.model, refresh_every=refresh)
        opts = SamplingOptions(temperature=0.0, block_size=block)
        res = infill(lm, text, length=8, options=opts, denoiser=den)
        return [h.token_ids for h in res.holes], den

    whole, den_whole = run(None)
    blocks, den_blocks = run(4)
    assert all(len(h) == 8 for h in blocks)
    assert den_blocks.full_passes == 1 and den_blocks.switches == 5  # 24 masks in 6 blocks of 4
    assert den_blocks.forward_passes == den_whole.forward_passes == 24
    assert den_blocks.tokens_processed < den_whole.tokens_processed / 2
    # refreshed every step, the cache is exact: the same tokens as the full canvas with the same blocks
    exact, den_exact = run(4, refresh=1)
    full, _ = run(4, den=FullCanvasDenoiser(lm.model))
    assert exact == full and den_exact.full_passes == 24


def test_steps_writing_into_the_stored_canvas_mark_what_they_overwrote(lm):
    """A one-row request's steps write their keys/values into the canvas the store saved (no copy of it):
    every position they wrote is marked overwritten in the store, and every other one still holds what was
    saved, so a later request reuses only keys/values that match its tokens."""
    from diffucoder_lsp.engine.reuse import OVERWRITTEN, ContextStore

    x, valid, masked = _three_holes(lm)
    store = ContextStore(min_tokens=1)
    cache = CachedContextDenoiser(lm.model, store=store)
    order = masked.long().cumsum(1) - 1
    cache(x, valid, masked & (order // 5 == 0))
    saved = [(k.clone(), v.clone()) for k, v in store.entry.kvs]
    x2 = x.clone()
    x2[masked & (order // 5 == 0)] = lm.tokenizer.encode("z")[0]  # the first hole is revealed
    cache(x2, valid, masked & (order // 5 == 1))  # the step writes the revealed tokens' keys/values
    assert cache.switches == 1
    assert store.holds(cache._kv_full)  # written in place, not into a copy
    marked = torch.tensor([t == OVERWRITTEN for t in store.entry.tokens])
    assert marked[(masked & (order // 5 == 0))[0]].all()  # the revealed positions
    kept = ~marked
    assert marked.sum() <= 2 * (5 + 1)  # at most the two blocks and their predecessors
    assert [t for t, m in zip(store.entry.tokens, marked, strict=True) if not m] == x[0][kept].tolist()
    for (k, v), (k0, v0) in zip(store.entry.kvs, saved, strict=True):
        assert torch.equal(k[:, :, kept], k0[:, :, kept]) and torch.equal(v[:, :, kept], v0[:, :, kept])
        assert not torch.equal(k[:, :, marked], k0[:, :, marked])
    # the next request of the stream (the same canvas) reuses only the unmarked positions
    store.max_fresh = 1.0
    reused, _, _ = store.lookup(lm.model.config, x, valid, masked)
    assert reused[0].sum() > 0 and not (reused[0] & marked).any()


def test_step_profile_script_reports_steps_and_host_reads(tiny_ckpt, tmp_path):
    """scripts/step_profile.py (the GPU check's step profile) runs on a CPU and reports per-step figures."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "step_profile.py"
    spec = importlib.util.spec_from_file_location("step_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "profile.json"
    args = [
        "--model",
        str(tiny_ckpt),
        "--device",
        "cpu",
        "--context",
        "96",
        "--span",
        "8",
        "--json",
        str(out),
    ]
    assert module.main(args) == 0
    got = json.loads(out.read_text())
    assert got["steps"] >= 1 and got["fill_ms"] > 0 and got["device_busy_ms_per_step"] is None
    assert got["host_reads_per_step"]["aten::_local_scalar_dense"] > 0  # the loop reads values on the host


def test_full_passes_call_back_between_layers_without_changing_the_fill(lm):
    """A long job's first pass lets interactive work in after every layer (the language server's Fill All
    Holes); the callback's answer never abandons the pass, and the fill is the same as without it."""
    calls = []
    hooked = CachedContextDenoiser(lm.model, between_layers=lambda: calls.append(1) or True)
    with_hook, _ = fill_ids(lm, hooked, steps=12)
    without, _ = fill_ids(lm, CachedContextDenoiser(lm.model), steps=12)
    assert with_hook == without
    assert len(calls) == lm.config.num_hidden_layers * hooked.full_passes and hooked.full_passes == 1
