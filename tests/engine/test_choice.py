"""Token choice: nucleus filtering, the draw and the confidences match their textbook definitions."""

from __future__ import annotations

import pytest
import torch

from diffucoder_lsp.engine.choice import (
    _top_p,
    _top_p_binned,
    _top_p_sorted,
    entropy,
    filter_logits,
    pick_tokens,
    sample_categorical,
)
from diffucoder_lsp.engine.sampler import SamplingOptions


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = torch.isfinite(filter_logits(logits, None, 2))
    assert kept_k.tolist() == [[True, True, False, False]]
    # nucleus 0.7: 0.5 alone is below 0.7, so 0.3 joins; 0.15 is not needed
    kept_p = torch.isfinite(filter_logits(logits, 0.7, None))
    assert kept_p.tolist() == [[True, True, False, False]]
    kept_small = torch.isfinite(filter_logits(logits, 0.1, None))
    assert kept_small.tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, 1.0, None)).all()


@pytest.mark.parametrize("which", ["probe+histogram", "histogram"])
@pytest.mark.parametrize("scale", [0.05, 1.0, 4.0, 30.0, 300.0])
def test_fast_nucleus_matches_the_sorted_definition(scale, which):
    """The fast nucleus (peaked rows close within 64 candidates, flat ones go through a histogram of
    log-probabilities) keeps the same tokens as the sort-based definition, up to float rounding at the
    boundary; the most likely token always survives."""

    fn = _top_p if which == "probe+histogram" else _top_p_binned
    g = torch.Generator().manual_seed(int(scale * 100))
    logits = torch.randn(48, 4096, generator=g) * scale
    logits[:4, :50] = float("-inf")
    kept = fn(logits, 0.9)
    fast = torch.isfinite(kept)
    slow = torch.isfinite(_top_p_sorted(logits, 0.9))
    differ = (fast != slow).sum(1)
    assert int(differ.max()) <= 1 and int((differ > 0).sum()) <= 1
    assert torch.equal(kept[fast & slow], logits[fast & slow])  # kept logits are unchanged
    assert fast.gather(1, logits.argmax(-1, keepdim=True)).all()
    if scale <= 1.0:  # flat rows: the nucleus holds many tokens, not just the top one
        assert int(fast.sum()) > 48 * 100


def test_categorical_draws_follow_the_distribution_and_skip_zeros():
    """Inverse-CDF sampling: frequencies match each row's probabilities (within 5 standard errors over 20k
    draws), tokens of probability 0 are never drawn (zeros interleaved, leading and trailing), rows that do
    not sum to 1 are treated as their normalised selves, and a seeded generator repeats its draws."""
    g = torch.Generator().manual_seed(3)
    base = torch.rand(3, 40, generator=g)
    base[:, ::3] = 0.0  # interleaved zeros, the first token included
    base[:, -5:] = 0.0  # a zero tail
    base[1] *= 7.5  # does not sum to 1
    n = 20_000
    probs = base.repeat_interleave(n, dim=0)
    draws = sample_categorical(probs, torch.Generator().manual_seed(0)).view(3, n)
    assert (base.gather(1, draws) > 0).all()
    expected = base / base.sum(-1, keepdim=True)
    freq = torch.stack([torch.bincount(row, minlength=40) for row in draws]).float() / n
    tolerance = 5 * (expected * (1 - expected) / n).sqrt() + 1e-9
    assert ((freq - expected).abs() <= tolerance).all()
    again = sample_categorical(probs, torch.Generator().manual_seed(0)).view(3, n)
    assert torch.equal(draws, again)
    one_hot = torch.zeros(4, 9)
    one_hot[torch.arange(4), torch.tensor([0, 3, 8, 5])] = 1.0
    assert sample_categorical(one_hot, None).tolist() == [0, 3, 8, 5]
    assert sample_categorical(torch.zeros(0, 9), None).shape == (0,)


def _mixed_logits(seed: int = 5) -> torch.Tensor:
    """Peaked rows (nucleus within 64 candidates), flat rows (it is not), and rows with -inf entries."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.cat([torch.randn(6, 3000, generator=g) * 8, torch.randn(5, 3000, generator=g) * 0.05])
    logits[[0, 7], 100:2000] = float("-inf")
    return logits[torch.randperm(11, generator=g)]


def _textbook_filter(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Top-k, then the nucleus by a full sort: the definitions the fast routes must reproduce."""
    logits = filter_logits(logits, None, top_k)
    return _top_p_sorted(logits, top_p) if top_p is not None and top_p < 1 else logits


@pytest.mark.parametrize("rows", ["mixed", "flat"])
@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin"])
@pytest.mark.parametrize(
    "top_p,top_k,temperature",
    [(0.95, None, 0.0), (0.9, None, 0.5), (None, 20, 0.0), (0.8, 40, 1.0), (None, None, 0.0)],
)
def test_picking_from_nucleus_candidates_matches_the_whole_vocabulary(alg, top_p, top_k, temperature, rows):
    """Rows whose nucleus lies within their best 64 candidates are picked from those alone, flat ones from a
    nucleus mask and sums over it: the same greedy token, confidence, probability and entropy as from the
    whole vocabulary filtered by the textbook definitions, for every algorithm, in a batch that mixes both
    kinds of row and in one of flat rows only."""
    logits = _mixed_logits()
    if rows == "flat":
        logits = logits[logits.softmax(-1).amax(-1) < 0.01]
        assert logits.shape[0] == 5
    opts = SamplingOptions(alg=alg, top_p=top_p, top_k=top_k, temperature=temperature)
    got = pick_tokens(logits, opts, torch.Generator().manual_seed(0), with_entropy=True)
    tempered = logits / temperature if temperature > 0 else logits
    probs = _textbook_filter(tempered, top_p, top_k).softmax(-1)
    want_entropy = entropy(probs)
    assert torch.allclose(got.entropy, want_entropy, atol=1e-4)
    assert torch.allclose(got.probability, probs.gather(1, got.tokens[:, None]).squeeze(1), atol=1e-5)
    assert (probs.gather(1, got.tokens[:, None]) > 0).all()  # never a filtered-out token
    if temperature == 0:
        assert torch.equal(got.tokens, probs.argmax(-1))
    if alg == "entropy":
        assert torch.allclose(got.confidence, -want_entropy, atol=1e-4)
    elif alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        assert torch.allclose(got.confidence, top2[:, 0] - top2[:, 1], atol=1e-5)
    else:
        assert torch.allclose(got.confidence, got.probability)


@pytest.mark.parametrize("route", ["candidates", "flat"])
def test_draws_follow_the_filtered_distribution(route):
    """Sampling through either route (a peaked row's 64 candidates, a flat row's nucleus mask): token
    frequencies match the filtered distribution, and the tokens the nucleus drops are never drawn."""
    seed, vocab, scale, top_p, n = (
        (2, 500, 3.5, 0.9, 20_000) if route == "candidates" else (4, 300, 0.8, 0.6, 30_000)
    )
    row = torch.randn(1, vocab, generator=torch.Generator().manual_seed(seed)) * scale
    opts = SamplingOptions(temperature=1.0, top_p=top_p)
    got = pick_tokens(row.expand(n, -1), opts, torch.Generator().manual_seed(1))
    probs = _textbook_filter(row, top_p, None).softmax(-1)[0]
    kept = int((probs > 0).sum())
    if route == "candidates":
        assert kept <= 64  # a peaked row
    else:
        assert 64 < kept < 250  # an open row, with tokens to drop
    freq = torch.bincount(got.tokens, minlength=vocab).float() / n
    assert (freq[probs == 0] == 0).all()
    assert ((freq - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-9).all()


def test_fast_nucleus_on_a_batch_mixing_peaked_and_flat_rows():
    """Peaked rows close within the probe, flat rows in the same batch go through the histogram."""

    g = torch.Generator().manual_seed(7)
    logits = torch.cat([torch.randn(8, 4096, generator=g) * 30, torch.randn(8, 4096, generator=g) * 0.05])
    logits = logits[torch.randperm(16, generator=g)]
    fast = torch.isfinite(_top_p(logits, 0.9))
    slow = torch.isfinite(_top_p_sorted(logits, 0.9))
    differ = (fast != slow).sum(1)
    assert int(differ.max()) <= 1 and int((differ > 0).sum()) <= 1
    assert int(fast.sum(1).min()) < 64 < int(fast.sum(1).max())  # both kinds of row really are there
