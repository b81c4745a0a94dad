"""The masked diffusion loss against a hand computation with a fixed tiny model and injected noise."""

from __future__ import annotations

import math

import pytest
import torch

from diffucoder_lsp.model.network import DreamModel
from diffucoder_lsp.model.tiny import tiny_config
from diffucoder_lsp.train.losses import EPS, apply_noise, apply_ordered_noise, masked_diffusion_loss, sample_t

MASK_ID, EOS_ID, VOCAB = 4, 0, 50


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DreamModel(tiny_config(VOCAB, MASK_ID, EOS_ID))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.eval()


def _batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(6, VOCAB, (2, 8), generator=g)
    trainable = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    masked = torch.tensor([[0, 1, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 1, 0, 0]], dtype=torch.bool)
    t = torch.tensor([0.5, 0.25])
    return ids, trainable, masked, t


def test_loss_matches_hand_computation(model):
    ids, trainable, masked, t = _batch()
    loss, stats = masked_diffusion_loss(model, ids, trainable, t=t, masked=masked)
    noisy = torch.where(masked, torch.tensor(MASK_ID), ids)
    with torch.no_grad():
        logits = model.denoise_logits(noisy)  # shifted: entry i predicts token i
    expected = 0.0
    for b in range(2):
        for i in range(8):
            if masked[b, i]:
                logp = torch.log_softmax(logits[b, i].double(), -1)[ids[b, i]]
                expected += -float(logp) / float(t[b])
    expected /= int(trainable.sum())  # normalised by the number of trainable tokens (8 + 3)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats.masked == 5 and stats.trainable == 11


def test_loss_uses_the_logit_shift(model):
    """Reading predictions from the same position (no shift) gives a different value: the shift is pinned."""
    ids, trainable, masked, t = _batch()
    loss, _ = masked_diffusion_loss(model, ids, trainable, t=t, masked=masked)
    noisy = torch.where(masked, torch.tensor(MASK_ID), ids)
    with torch.no_grad():
        unshifted = model(noisy)
    wrong = (
        sum(
            -float(torch.log_softmax(unshifted[b, i], -1)[ids[b, i]]) / float(t[b])
            for b in range(2)
            for i in range(8)
            if masked[b, i]
        )
        / 11
    )
    assert abs(loss.item() - wrong) > 1e-3


def test_masks_outside_trainable_region_are_ignored(model):
    ids, trainable, masked, t = _batch()
    masked_everywhere = torch.ones_like(masked)
    _, stats = masked_diffusion_loss(model, ids, trainable, t=t, masked=masked_everywhere)
    assert stats.masked == int(trainable.sum())
    # invalid (padding) positions are never trainable even if flagged so
    valid = torch.ones_like(trainable)
    valid[1, 5:] = False
    _, stats = masked_diffusion_loss(model, ids, trainable, valid=valid, t=t, masked=masked_everywhere)
    assert stats.masked == 8 + 2 and stats.trainable == 10


def test_noise_rate_follows_t_and_respects_trainable():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, VOCAB, (4, 4000), generator=g)
    trainable = torch.ones_like(ids, dtype=torch.bool)
    trainable[:, :1000] = False
    t = torch.tensor([0.1, 0.5, 0.9, 1.0])
    noisy, masked = apply_noise(ids, trainable, t, MASK_ID, g)
    assert not masked[:, :1000].any() and (noisy[:, :1000] == ids[:, :1000]).all()
    rates = masked[:, 1000:].float().mean(1)
    assert torch.allclose(rates, t, atol=0.03)
    assert (noisy[masked] == MASK_ID).all() and (noisy[~masked] == ids[~masked]).all()


def test_ordered_noise_masks_the_last_t_share_of_each_rows_trainable_tokens():
    """The canvas left-to-right decoding sees: the hole written up to a point, every token after it masked."""
    ids = torch.arange(10, 10 + 2 * 12).view(2, 12)
    trainable = torch.zeros(2, 12, dtype=torch.bool)
    trainable[0, 2:10] = True  # 8 hole tokens
    trainable[1, 5:9] = True  # 4 hole tokens
    t = torch.tensor([0.5, 0.001])
    noisy, masked = apply_ordered_noise(ids, trainable, t, MASK_ID)
    assert masked[0].nonzero().flatten().tolist() == [6, 7, 8, 9]  # the last half: 4 of 8
    assert masked[1].nonzero().flatten().tolist() == [8]  # a tiny t still masks one token
    assert (noisy[masked] == MASK_ID).all() and (noisy[~masked] == ids[~masked]).all()
    _, whole = apply_ordered_noise(ids, trainable, torch.tensor([1.0, 1.0]), MASK_ID)
    assert (whole == trainable).all()
    empty = torch.zeros_like(trainable)
    _, none = apply_ordered_noise(ids, empty, t, MASK_ID)
    assert not none.any()


def test_sft_rows_take_ordered_noise_in_the_share_asked():
    """``ordered_fraction`` 1: every row's masks are one stretch at the end of its hole; 0: the random masks
    drawn as before (the same generator draws, so earlier runs' noise is unchanged)."""
    from diffucoder_lsp.train.coupled import MaskedHead
    from diffucoder_lsp.train.sft import head_diffusion_loss

    seen = []

    class Spy(MaskedHead):
        def forward(self, noisy, valid, masked):
            seen.append(masked.clone())
            return super().forward(noisy, valid, masked)

    torch.manual_seed(0)
    head = Spy(DreamModel(tiny_config(VOCAB, MASK_ID, EOS_ID)))
    ids = torch.randint(6, VOCAB, (16, 20), generator=torch.Generator().manual_seed(1))
    trainable = torch.zeros_like(ids, dtype=torch.bool)
    trainable[:, 4:16] = True
    valid = torch.ones_like(trainable)
    for frac in (1.0, 0.0):
        head_diffusion_loss(head, ids, trainable, valid, torch.Generator().manual_seed(3), MASK_ID, frac)
    ordered, plain = seen
    for row in ordered:
        cols = row.nonzero().flatten().tolist()
        assert cols and cols == list(range(cols[0], 16))  # one stretch ending where the hole ends
    shapes = [r.nonzero().flatten().tolist() for r in plain if r.any()]
    assert any(c != list(range(c[0], 16)) for c in shapes)  # random masks are not all such stretches
    g = torch.Generator().manual_seed(3)
    t = sample_t(16, g)
    _, expected = apply_noise(ids, trainable, t, MASK_ID, g)
    assert torch.equal(plain, expected)


def test_the_causal_loss_predicts_each_trained_token_from_the_ones_before_it(model):
    """``head_causal_loss`` (``train sft --causal-fraction``): the mean cross-entropy of every trainable token after
    the first from a causal pass over the unmasked row; no later token can change it."""
    from diffucoder_lsp.train.coupled import MaskedHead
    from diffucoder_lsp.train.sft import head_causal_loss

    ids, trainable, _, _ = _batch()
    valid = torch.ones_like(trainable)
    loss, value = head_causal_loss(MaskedHead(model), ids, trainable, valid)
    logits = model.lm_head(model.hidden_states(ids, valid, causal=True)).float()
    want = []
    for b in range(ids.shape[0]):
        for i in range(1, ids.shape[1]):
            if trainable[b, i]:
                want.append(-torch.log_softmax(logits[b, i - 1], -1)[ids[b, i]])
    assert loss.item() == pytest.approx(torch.stack(want).mean().item(), rel=1e-5) and value == pytest.approx(
        loss.item()
    )
    later = ids.clone()
    later[1, 7] = (later[1, 7] + 1) % VOCAB  # after row 1's last trained token: nothing it predicts changes
    row1 = trainable.clone()
    row1[0] = False
    a, _ = head_causal_loss(MaskedHead(model), ids, row1, valid)
    b, _ = head_causal_loss(MaskedHead(model), later, row1, valid)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_sample_t_range():
    t = sample_t(10000, torch.Generator().manual_seed(0))
    assert float(t.min()) >= EPS and float(t.max()) <= 1.0
    assert abs(float(t.mean()) - 0.5) < 0.02


def test_drawn_noise_is_reproducible_and_gradients_flow(model):
    ids, trainable, _, _ = _batch()
    m = DreamModel(model.config)
    m.load_state_dict(model.state_dict())
    l1, s1 = masked_diffusion_loss(m, ids, trainable, generator=torch.Generator().manual_seed(3))
    l2, s2 = masked_diffusion_loss(m, ids, trainable, generator=torch.Generator().manual_seed(3))
    assert l1.item() == l2.item() and s1.masked == s2.masked
    l1.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert math.isfinite(s1.ce) and 0.0 <= s1.accuracy <= 1.0
