"""Coupled-GRPO estimator and loss: masks, weights, shared seeds, variance, hand-computed advantages and loss."""

from __future__ import annotations

import math

import pytest
import torch

from diffucoder_lsp.model.loading import load_model
from diffucoder_lsp.train.coupled import (
    MaskedHead,
    estimate_logprobs,
    grpo_loss,
    leave_one_out,
    masked_logprobs,
    plan_masks,
    sequence_estimate,
)


def _completion(b=6, n=30, start=8, end=26):
    comp = torch.zeros(b, n, dtype=torch.bool)
    comp[:, start:end] = True
    return comp


def test_coupled_masks_are_complements_inside_the_completion():
    comp = _completion()
    plan = plan_masks(comp, seeds=list(range(6)), coupled=True)
    m1, m2 = plan.masks
    assert not (m1 & m2).any(), "a token masked in both passes would be scored twice"
    assert torch.equal(m1 | m2, comp), "every completion token must be scored exactly once"
    assert not ((m1 | m2) & ~comp).any(), "the prompt is never masked"
    assert ((plan.t >= 0.2) & (plan.t <= 0.8)).all()
    torch.testing.assert_close(plan.weights[0], 1 / plan.t)
    torch.testing.assert_close(plan.weights[1], 1 / (1 - plan.t))
    # the share masked in pass 1 follows t (18 tokens per row, 6 rows: loose bound)
    assert abs(m1.float().sum(1).div(18).mean() - plan.t.mean()) < 0.25


def test_decoupled_mask_is_one_pass_subset():
    comp = _completion()
    plan = plan_masks(comp, seeds=list(range(6)), coupled=False)
    assert len(plan.masks) == 1
    assert not (plan.masks[0] & ~comp).any()
    assert plan.masks[0].sum() < comp.sum(), "a single random mask leaves some tokens unscored"
    torch.testing.assert_close(plan.weights[0], 1 / plan.t)


def test_same_seeds_same_masks_and_different_seeds_differ():
    comp = _completion()
    a = plan_masks(comp, [1, 2, 3, 4, 5, 6])
    b = plan_masks(comp, [1, 2, 3, 4, 5, 6])
    c = plan_masks(comp, [7, 8, 9, 10, 11, 12])
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
    assert torch.equal(a.t, b.t)
    assert not torch.equal(a.masks[0], c.masks[0])


def test_estimate_is_weighted_logprob_of_each_token_once(tiny_ckpt_fp32):
    lm = load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32")
    tok = lm.tokenizer
    ids = torch.tensor([tok.encode("def fibonacci(n):\n    return fibonacci(n - 1) + n\n")] * 2)
    comp = torch.zeros_like(ids, dtype=torch.bool)
    comp[:, 5:] = True
    plan = plan_masks(comp, [3, 4])
    with torch.no_grad():
        est = estimate_logprobs(lm.model, ids, None, plan, tok.mask_id)
        # by hand: pass k masks its tokens, the model's shifted log-softmax at each masked token, times w_k
        expect = torch.zeros_like(est)
        for m, w in zip(plan.masks, plan.weights, strict=True):
            noisy = torch.where(m, torch.full_like(ids, tok.mask_id), ids)
            logp = lm.model.denoise_logits(noisy).float().log_softmax(-1)
            tok_lp = logp.gather(-1, ids[..., None]).squeeze(-1)
            expect += torch.where(m, tok_lp * w[:, None], torch.zeros_like(tok_lp))
    torch.testing.assert_close(est, expect, atol=1e-4, rtol=1e-4)
    assert (est[comp] < 0).all() and (est[~comp] == 0).all()
    # the wrapper path used in training gives the same numbers
    with torch.no_grad():
        via_head = masked_logprobs(MaskedHead(lm.model), ids, None, plan.masks[0], tok.mask_id)
        direct = masked_logprobs(lm.model, ids, None, plan.masks[0], tok.mask_id)
    torch.testing.assert_close(via_head, direct)


def test_coupled_estimate_has_lower_variance_than_single_mask(tiny_ckpt_fp32, capsys):
    """On a fixed model and completion, 400 draws of each estimator of the (per-pass) sequence log-likelihood."""
    torch.manual_seed(0)
    lm = load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32")
    tok = lm.tokenizer
    text = "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    ids = torch.tensor([tok.encode(text)])
    comp = torch.zeros_like(ids, dtype=torch.bool)
    comp[:, 10:] = True
    n = 400
    out = {}
    for coupled in (True, False):
        plan = plan_masks(comp.repeat(n, 1), list(range(n)), coupled=coupled)
        with torch.no_grad():
            s = sequence_estimate(
                estimate_logprobs(lm.model, ids.repeat(n, 1), None, plan, tok.mask_id), plan
            )
        out[coupled] = (float(s.mean()), float(s.var()))
    ratio = out[False][1] / out[True][1]
    with capsys.disabled():
        print(
            f"\n[coupled estimator] variance single/coupled = {ratio:.2f} "
            f"(means {out[True][0]:.1f} vs {out[False][0]:.1f})"
        )
    # same target (means within a few standard errors), much lower spread
    se = math.sqrt(out[False][1] / n + out[True][1] / n)
    assert abs(out[True][0] - out[False][0]) < 4 * se
    assert out[True][1] < out[False][1] / 2, f"variance ratio only {ratio:.2f}"


def test_leave_one_out_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    adv = leave_one_out(r)
    # row 0: 1 - (0+0+1)/3 = 2/3 ; 0 - (1+0+1)/3 = -2/3
    torch.testing.assert_close(adv[0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    torch.testing.assert_close(adv[1], torch.zeros(4))
    with pytest.raises(ValueError):
        leave_one_out(torch.tensor([[1.0]]))


def test_grpo_loss_by_hand():
    # two completions, three positions; the last position of row 1 is not scored
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.5, -0.5], [-0.5, -1.0, -1.0]])
    ref = torch.tensor([[-1.0, -2.0, -1.5], [-1.0, -2.0, -3.0]])
    adv = torch.tensor([1.0, -2.0])
    scored = torch.tensor([[True, True, True], [True, True, False]])
    eps, beta = 0.2, 0.1
    parts = grpo_loss(lp, old, ref, adv, scored, clip_eps=eps, beta=beta)

    def tok_term(cur, o, rf, a):
        ratio = math.exp(cur - o)
        obj = min(ratio * a, max(min(ratio, 1 + eps), 1 - eps) * a)
        d = rf - cur
        return -(obj - beta * (math.exp(d) - d - 1))

    row0 = sum(tok_term(*v, 1.0) for v in [(-1, -1, -1), (-2, -2.5, -2), (-0.5, -0.5, -1.5)]) / 3
    row1 = sum(tok_term(*v, -2.0) for v in [(-1, -0.5, -1), (-1, -1, -2)]) / 2
    assert parts.loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # clipped tokens: row0 pos1 (ratio e^0.5 > 1.2, adv > 0) and row1 pos0 (ratio e^-0.5 < 0.8, adv < 0)
    assert parts.clip_fraction == pytest.approx(2 / 5)
    parts.loss.backward()
    assert lp.grad[1, 2] == 0, "an unscored position gets no gradient"
    # row 0 pos 1 is clipped (no policy gradient) and equals the reference (no KL gradient)
    assert lp.grad[0, 1] == 0
    assert lp.grad[0, 0] != 0, "an unclipped token with a non-zero advantage gets a gradient"


def test_grpo_loss_without_reference_is_plain_clipped_objective():
    lp = torch.zeros(2, 2, requires_grad=True)
    parts = grpo_loss(lp, lp.detach(), None, torch.tensor([1.0, -1.0]), torch.ones(2, 2, dtype=torch.bool))
    assert parts.loss.item() == pytest.approx(0.0)  # ratio 1: -(A) averaged, A sums to 0
    assert parts.kl == 0.0 and parts.clip_fraction == 0.0 and parts.ratio_mean == pytest.approx(1.0)
    parts.loss.backward()
    # d/dlp of -(ratio * A)/2 tokens / 2 rows at ratio 1: -A / 4
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.25, -0.25], [0.25, 0.25]]))
