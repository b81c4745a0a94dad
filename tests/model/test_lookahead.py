"""The learned lookahead: a per-head bias on attention to later keys (our extension, off for DiffuCoder).

What it must guarantee: at a very negative bias the network is its causal self (an adapted AR base starts as
the AR model), at zero it is the plain bidirectional network, the bias reaches every attention path (full
canvas, context cache with its positions, the short-query CPU kernel), and checkpoints carry it as data.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from diffucoder_lsp.errors import CheckpointError
from diffucoder_lsp.model.config import ModelConfig
from diffucoder_lsp.model.loading import load_model
from diffucoder_lsp.model.network import LOOKAHEAD_INIT, DreamModel
from diffucoder_lsp.model.tiny import write_tiny_checkpoint

CFG = ModelConfig(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    mask_token_id=100,
    pad_token_id=0,
    eos_token_id=0,
    bos_token_id=0,
    learned_lookahead=True,
)


def _model(bias: float | None = None, seed: int = 0) -> DreamModel:
    torch.manual_seed(seed)
    m = DreamModel(CFG).eval()
    for layer in m.model.layers:
        if bias is None:
            layer.self_attn.lookahead_bias.data.normal_(0.0, 2.0)
        else:
            layer.self_attn.lookahead_bias.data.fill_(bias)
    return m


def _ids(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 100, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [20, 200])  # the short-query CPU kernel and SDPA
def test_a_very_negative_bias_is_the_causal_network(n):
    m, x = _model(-1e4), _ids(n)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.lm_head(m.hidden_states(x, causal=True)), atol=1e-5, rtol=0)


def test_the_initial_bias_is_causal_to_float_precision():
    m, x = _model(LOOKAHEAD_INIT), _ids(30)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.lm_head(m.hidden_states(x, causal=True)), atol=2e-3, rtol=0)


@pytest.mark.parametrize("n", [20, 200])
def test_a_zero_bias_is_the_bidirectional_network(n):
    m, x = _model(0.0), _ids(n)
    plain = DreamModel(dataclasses.replace(CFG, learned_lookahead=False)).eval()
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("lookahead_bias")}
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain(x), atol=1e-5, rtol=0)


def test_the_bias_changes_the_output_and_gets_a_gradient():
    m, x = _model(-1.0), _ids(24)
    with torch.no_grad():
        before = m(x)
        m.model.layers[0].self_attn.lookahead_bias[1] = 2.0
        assert not torch.allclose(before, m(x))
    m.train()
    m(x).float().pow(2).mean().backward()
    assert all(float(layer.self_attn.lookahead_bias.grad.abs().sum()) > 0 for layer in m.model.layers)


def test_the_context_cache_gives_the_full_canvas_logits():
    """The cached path knows its context keys' positions: its first step and a refreshed step are exact."""
    from diffucoder_lsp.engine.cache import CachedContextDenoiser
    from diffucoder_lsp.engine.denoiser import FullCanvasDenoiser

    m = _model(None)
    x = _ids(48)[:1].clone()
    x[0, 10:22] = CFG.mask_token_id
    valid = torch.ones_like(x, dtype=torch.bool)
    masked = x == CFG.mask_token_id
    with torch.no_grad():
        torch.testing.assert_close(
            CachedContextDenoiser(m)(x, valid, masked),
            FullCanvasDenoiser(m)(x, valid, masked),
            atol=1e-4,
            rtol=0,
        )
        cached = CachedContextDenoiser(m, refresh_every=1)
        cached(x, valid, masked)
        x2 = x.clone()
        x2[0, 12] = 7
        m2 = x2 == CFG.mask_token_id
        # a step after the first, on the active positions over the cached context
        step = CachedContextDenoiser(m, refresh_every=0)
        step(x2, valid, m2)
        torch.testing.assert_close(
            step(x2, valid, m2), FullCanvasDenoiser(m)(x2, valid, m2), atol=1e-4, rtol=0
        )


def test_cached_keys_without_positions_are_refused():
    m, x = _model(0.0), _ids(10)
    with torch.no_grad():
        _, kvs = m.hidden_states(x, return_kv=True)
        with pytest.raises(ValueError, match="extra_positions"):
            m.hidden_states(x[:, :2], extra_kv=kvs, extra_valid=torch.ones_like(x, dtype=torch.bool))


def test_config_and_checkpoint_carry_the_bias_as_data(tmp_path):
    with pytest.raises(CheckpointError, match="learned_lookahead"):
        dataclasses.replace(CFG, learned_lookahead="yes")
    folder = write_tiny_checkpoint(tmp_path / "look", learned_lookahead=True)
    lm = load_model(folder, device="cpu", dtype="fp32")
    assert lm.config.learned_lookahead
    assert lm.model.model.layers[0].self_attn.lookahead_bias.shape == (lm.config.num_attention_heads,)
    # a config that asks for the bias with weights that lack it is refused before anything is allocated
    plain = write_tiny_checkpoint(tmp_path / "plain")
    cfg = json.loads((plain / "config.json").read_text())
    cfg["learned_lookahead"] = True
    (plain / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="lookahead_bias"):
        load_model(plain, device="cpu", dtype="fp32")


@pytest.mark.parametrize("padded", [False, True])
def test_inference_reuses_one_bias_buffer_across_layers_and_matches_a_fresh_one(padded, monkeypatch):
    """Without a gradient each layer writes its lookahead scores into the pass's buffers (a fresh 38 MB
    allocation per layer cost a 1k-token CPU pass ~25 % of its time); the result is the same tensor for tensor,
    and with a gradient every layer gets its own (backward needs each layer's scores)."""
    from diffucoder_lsp.model import network

    m, x = _model(), _ids(200)
    valid = torch.ones_like(x, dtype=torch.bool)
    if padded:
        valid[1, -30:] = False
    made: list[torch.Tensor] = []
    real = network.lookahead_mask

    def spy(*args):
        made.append(out := real(*args))
        return out

    monkeypatch.setattr(network, "lookahead_mask", spy)
    with torch.no_grad():
        reused = m(x, valid)
    # two layers, two query chunks each (128 + 72): one buffer per chunk shape, reused by the second layer
    assert len(made) == 4 and made[0].shape[2] == network.LOOKAHEAD_QUERY_CHUNK and made[1].shape[2] == 72
    assert made[0].data_ptr() == made[2].data_ptr() and made[1].data_ptr() == made[3].data_ptr()
    monkeypatch.setattr(network, "lookahead_mask", lambda *args: real(*args[:4], None))
    with torch.no_grad():
        assert torch.equal(reused, m(x, valid))  # a fresh tensor per layer, the previous behaviour

    made.clear()
    monkeypatch.setattr(network, "lookahead_mask", spy)
    m(x, valid).float().sum().backward()  # with a gradient: each layer keeps its own scores for backward
    assert len(made) == 4 and len({t.data_ptr() for t in made}) == 4
    assert all(layer.self_attn.lookahead_bias.grad is not None for layer in m.model.layers)


@pytest.mark.parametrize("bias", [None, 0.0])
def test_a_batchs_rows_step_as_each_row_does_alone(bias):
    """Steps write into and read the canvas-ordered keys/values (``KVInPlace``), one row or a padded batch of
    them: walking a hole one position a step (as blocks of one do), revealing as it goes, a row gives the same
    logits alone and in a batch, and a learned lookahead sees the same later keys."""
    from diffucoder_lsp.engine.cache import CachedContextDenoiser

    m = _model(bias)
    x = _ids(60)[:1].clone()
    x[0, 20:30] = CFG.mask_token_id
    valid = torch.ones_like(x, dtype=torch.bool)
    one, two = CachedContextDenoiser(m), CachedContextDenoiser(m)
    with torch.no_grad():
        for col in range(20, 30):
            masked = x == CFG.mask_token_id
            ask = masked & (masked.long().cumsum(1) == 1)  # the first masked position only
            got = one(x, valid, ask)
            batch = two(x.expand(2, -1), valid.expand(2, -1), ask.expand(2, -1))
            torch.testing.assert_close(got, batch[:1], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch[:1], batch[1:], atol=1e-6, rtol=0)
            x[0, col] = int(got.argmax(-1)[0]) % 99 + 1  # reveal it (never the mask id)
    assert one.full_passes == two.full_passes == 1 and one.switches == two.switches == 9


@pytest.mark.parametrize("rows", [1, 3])
def test_a_causal_models_cached_steps_are_exact_and_compute_one_position_each(rows):
    """At a very negative bias (the causal network) a position's keys/values depend on earlier positions only,
    so computing each revealed token's once, as an AR decoder with a KV cache does, is exact: walking a hole
    left to right, every step's logits equal a full pass over the canvas, and each step after the first
    computes one position per row (its output predicts the next; the step also writes its keys/values). Rows
    of a batch differ in length (padding) and in where their hole is."""
    from diffucoder_lsp.engine.cache import CachedContextDenoiser
    from diffucoder_lsp.engine.denoiser import FullCanvasDenoiser

    m = _model(-1e4)
    x = torch.cat([_ids(60, seed=s)[:1] for s in range(rows)]).clone()
    valid = torch.ones_like(x, dtype=torch.bool)
    for r in range(rows):
        x[r, 15 + 3 * r : 25 + 3 * r] = CFG.mask_token_id
        valid[r, 60 - 4 * r :] = False  # padding at the end of the later rows
    x[~valid] = CFG.pad_token_id
    cache = CachedContextDenoiser(m)
    with torch.no_grad():
        for step in range(10):
            masked = (x == CFG.mask_token_id) & valid
            ask = masked & (masked.long().cumsum(1) == 1)
            before = cache.tokens_processed
            got = cache(x, valid, ask)
            want = FullCanvasDenoiser(m)(x, valid, ask)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
            if step:
                assert cache.tokens_processed - before == rows
            cols = ask.long().argmax(1)
            x[torch.arange(rows), cols] = got.argmax(-1) % 99 + 1
    assert cache.full_passes == 1


def test_in_place_keys_values_are_refused_where_they_cannot_apply():
    from diffucoder_lsp.model.network import KVInPlace

    m, x = _model(0.0), _ids(10)
    with torch.no_grad():
        _, kvs = m.hidden_states(x[:1], return_kv=True)
        own = torch.tensor([0, 0]), torch.tensor([3, 4]), torch.tensor([0, 1])
        bufs = [KVInPlace(k, v, *own) for k, v in kvs]
        pos = torch.arange(10)[None]
        with pytest.raises(ValueError, match="extra_valid"):
            m.hidden_states(x[:1, 3:5], extra_kv=bufs, extra_positions=pos)  # no extra_valid
        with pytest.raises(ValueError, match="causal"):
            m.hidden_states(
                x[:1, 3:5], extra_kv=bufs, extra_valid=torch.ones(1, 10, dtype=torch.bool), causal=True
            )


def test_long_passes_attend_in_query_chunks_with_the_same_outputs(monkeypatch):
    """At inference a long pass builds its lookahead scores a chunk of queries at a time (less peak memory); the
    outputs equal one buffer for all queries, with padding in the batch."""
    import diffucoder_lsp.model.network as net

    m, x = _model(None), _ids(300)
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[1, 260:] = False
    assert 300 % net.LOOKAHEAD_QUERY_CHUNK != 0  # several chunks, the last one shorter
    with torch.no_grad():
        chunked = m.hidden_states(x, valid)
        monkeypatch.setattr(net, "LOOKAHEAD_QUERY_CHUNK", 10_000)
        whole = m.hidden_states(x, valid)
    torch.testing.assert_close(chunked[valid], whole[valid], atol=1e-5, rtol=0)
