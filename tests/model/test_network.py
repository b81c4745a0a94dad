"""The network against transformers' Qwen2 run with a full (bidirectional) attention mask.

DiffuCoder is Qwen2 with the causal mask removed, so the strongest check of our own implementation is numerical
parity with Hugging Face's Qwen2 layers fed the same weights and a mask that lets every token see every token.
transformers' Qwen2Model accepts a prepared ``{"full_attention": mask}`` dict as ``attention_mask`` and then skips
building its causal mask; with the eager attention the mask is additive (0 = visible, very negative = hidden).
"""

from __future__ import annotations

import copy

import pytest
import torch

from diffucoder_lsp.model.loading import load_model
from diffucoder_lsp.model.network import positions_from_valid, shift_logits

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


@pytest.fixture(scope="module")
def ours(tiny_ckpt_fp32):
    return load_model(str(tiny_ckpt_fp32), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def hf(ours):
    cfg = ours.config
    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="eager",
    )
    model = transformers.Qwen2ForCausalLM(hf_cfg).float().eval()
    missing, unexpected = model.load_state_dict(ours.model.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model


def _bidirectional_mask(valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Additive (B, 1, L, L) mask: a valid query sees every valid key; padding queries see everything."""
    allowed = valid[:, None, None, :] | ~valid[:, None, :, None]
    mask = torch.zeros(allowed.shape, dtype=torch.float32)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return {"full_attention": mask}


def _hf_logits(hf, ids, valid=None, causal=False):
    with torch.no_grad():
        if causal:
            return hf(input_ids=ids).logits
        if valid is None:
            valid = torch.ones_like(ids, dtype=torch.bool)
        return hf(
            input_ids=ids, attention_mask=_bidirectional_mask(valid), position_ids=positions_from_valid(valid)
        ).logits


def _ids(ours, b, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, ours.tokenizer.vocab_size, (b, n), generator=g)


def test_forward_matches_hf_qwen2_bidirectional(ours, hf):
    ids = _ids(ours, 2, 24)
    with torch.no_grad():
        mine = ours.model(ids)
    theirs = _hf_logits(hf, ids)
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=1e-5)
    # The comparison is meaningful only if HF really ran non-causally: its causal run must differ.
    causal = _hf_logits(hf, ids, causal=True)
    assert (causal[:, :-1] - theirs[:, :-1]).abs().max() > 1e-3


def test_padded_batch_matches_hf_on_valid_positions(ours, hf):
    ids = _ids(ours, 3, 20, seed=1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, :5] = False  # left padding
    valid[1, -7:] = False  # right padding
    valid[2, 3:6] = False  # a hole in the middle
    ids = ids.masked_fill(~valid, ours.config.pad_token_id)
    with torch.no_grad():
        mine = ours.model(ids, valid)
    theirs = _hf_logits(hf, ids, valid)
    torch.testing.assert_close(mine[valid], theirs[valid], atol=ATOL, rtol=1e-5)
    # Padding must not leak into valid positions: the left-padded row equals the same tokens unpadded.
    with torch.no_grad():
        alone = ours.model(ids[0:1, 5:])
    torch.testing.assert_close(mine[0, 5:], alone[0], atol=ATOL, rtol=1e-5)


def test_denoise_logits_are_hf_logits_shifted_by_one(ours, hf):
    ids = _ids(ours, 2, 16, seed=2)
    with torch.no_grad():
        shifted = ours.model.denoise_logits(ids)
    theirs = _hf_logits(hf, ids)
    expected = torch.cat([theirs[:, :1], theirs[:, :-1]], dim=1)
    torch.testing.assert_close(shifted, expected, atol=ATOL, rtol=1e-5)
    # Spelled out: the prediction for token i is read from output i - 1 (and token 0 from output 0).
    torch.testing.assert_close(shifted[:, 5], theirs[:, 4], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(shifted[:, 0], theirs[:, 0], atol=ATOL, rtol=1e-5)
    assert torch.equal(shift_logits(theirs)[:, 1:], theirs[:, :-1])


def test_attention_is_bidirectional(ours):
    ids = _ids(ours, 1, 12, seed=3)
    changed = ids.clone()
    changed[0, 9] = (changed[0, 9] + 1) % ours.tokenizer.vocab_size
    with torch.no_grad():
        a, b = ours.model(ids), ours.model(changed)
    # A token to the right of position 2 changes what position 2 outputs.
    assert (a[0, 2] - b[0, 2]).abs().max() > 1e-4


def test_padded_rows_never_produce_nan(ours):
    ids = _ids(ours, 3, 10, seed=4)
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, :4] = False
    valid[1] = False  # a row that is all padding
    valid[2, -1] = False
    for dtype in (torch.float32, torch.bfloat16):
        model = copy.deepcopy(ours.model).to(dtype)  # a copy: the shared fixture must keep its fp32 weights
        with torch.no_grad():
            logits = model(ids, valid)
            shifted = model.denoise_logits(ids, valid)
        assert torch.isfinite(logits).all(), dtype
        assert torch.isfinite(shifted).all(), dtype


def test_causal_flag_ignores_future_tokens(ours, hf):
    ids = _ids(ours, 1, 14, seed=5)
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 3) % ours.tokenizer.vocab_size
    with torch.no_grad():
        a = ours.model.hidden_states(ids, causal=True)
        b = ours.model.hidden_states(changed, causal=True)
        hf_hidden = hf.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(a[0, :10], b[0, :10], atol=0, rtol=0)
    assert (a[0, 10:] - b[0, 10:]).abs().max() > 1e-4
    # And the causal path is exactly HF's default (causal) Qwen2.
    torch.testing.assert_close(a, hf_hidden, atol=ATOL, rtol=1e-5)


def test_the_in_place_inference_mlp_matches_the_autograd_one(ours):
    """Without gradients the MLP works in place; with them it must not (silu's backward needs its input)."""
    mlp = copy.deepcopy(ours.model.model.layers[0].mlp).requires_grad_(True)
    x = torch.randn(2, 7, ours.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = mlp(x)
    slow = mlp(x.clone().requires_grad_(True))
    assert torch.allclose(fast, slow.detach(), atol=1e-6)
    slow.sum().backward()  # no "modified by an inplace operation" error
    assert mlp.gate_proj.weight.grad is not None


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 16])
@pytest.mark.parametrize("bias", [True, False])
def test_small_row_projections_equal_the_layer(rows, bias):
    """``project`` computes few rows as ``W @ x.T`` (faster on a CPU): the same values as the layer, any
    leading shape, with or without a bias; with autograd on it is the layer itself (a gradient flows)."""
    from diffucoder_lsp.model.network import project

    torch.manual_seed(rows)
    layer = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(1, rows, 24)
    with torch.no_grad():
        got = project(layer, x)
        assert got.shape == (1, rows, 40) and got.is_contiguous()
        torch.testing.assert_close(got, layer(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(project(layer, x[0]), layer(x[0]), atol=1e-5, rtol=1e-5)
    w = x.clone().requires_grad_()
    project(layer, w).sum().backward()
    assert w.grad is not None and layer.weight.grad is not None


def test_projections_of_layers_that_are_not_plain_linears_call_the_layer():
    from diffucoder_lsp.model.network import project

    class Doubling(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    layer = Doubling(6, 4)
    x = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(project(layer, x), layer(x))
