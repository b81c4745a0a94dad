"""Coupled-GRPO's per-token log-probability estimate and the GRPO loss, as pure tensor functions.

A diffusion model has no cheap exact log-likelihood of a completion; GRPO needs one per token for its ratio.
The estimate masks part of the completion, runs the model once, and reads the log-probability of each masked
token's true id (with the logit shift: position ``i`` is predicted from the output at ``i - 1``).

- **Coupled** (DiffuCoder): per completion draw ``t ~ U(0.2, 0.8)`` and a uniform field ``r``; pass 1 masks the
  completion tokens where ``r < t``, pass 2 masks exactly the others. Every completion token is scored exactly
  once, each in a context where the other half is visible, with weight ``1/t`` (pass 1) or ``1/(1-t)``
  (pass 2). The per-token estimate is ``weight * log p``. Compared with one random mask this scores every
  token (no token's gradient is dropped at random) and the two halves are antithetic, so the sequence
  estimate has lower variance (``tests/train/test_coupled.py`` measures it on a fixed model).
- **Decoupled** (the plain baseline): one mask at level ``t``, weight ``1/t``; unmasked tokens are not scored.

The masks come from a per-completion seed (:func:`plan_masks`), so the old-policy, reference and current
passes see exactly the same masks: the ratio and the KL then compare the policies, not two noise draws.
Both passes of the coupled estimate run as one batch of 2B rows.

The loss (:func:`grpo_loss`) is GRPO's: leave-one-out advantages ``r_i - mean_{j != i} r_j`` within a prompt's
group, PPO-clipped ratio ``exp(lp - lp_old)``, k3 KL ``exp(lp_ref - lp) - (lp_ref - lp) - 1`` to the
reference, averaged over each completion's scored tokens, then over completions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

T_RANGE = (0.2, 0.8)


@dataclass
class MaskPlan:
    """The masks of one estimate: pass k masks ``masks[k]`` (B, L) and weighs its tokens by ``weights[k]`` (B,)."""

    masks: list[torch.Tensor]
    weights: list[torch.Tensor]
    t: torch.Tensor

    @property
    def scored(self) -> torch.Tensor:
        """Positions that get an estimate (the union of the passes' masks)."""
        out = torch.zeros_like(self.masks[0])
        for m in self.masks:
            out |= m
        return out

    def to(self, device) -> MaskPlan:
        return MaskPlan(
            [m.to(device) for m in self.masks], [w.to(device) for w in self.weights], self.t.to(device)
        )


def plan_masks(
    completion: torch.Tensor, seeds: list[int], coupled: bool = True, t_range: tuple[float, float] = T_RANGE
) -> MaskPlan:
    """Masks for completions ``completion`` (B, L) bool, one seed per row (drawn on the CPU: device-independent)."""
    b, n = completion.shape
    comp = completion.cpu().bool()
    lo, hi = t_range
    ts, rs = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        ts.append(lo + (hi - lo) * torch.rand((), generator=g))
        rs.append(torch.rand(n, generator=g))
    t = torch.stack(ts).float()
    r = torch.stack(rs)
    m1 = comp & (r < t[:, None])
    if not coupled:
        return MaskPlan([m1], [1.0 / t], t)
    m2 = comp & ~m1
    return MaskPlan([m1, m2], [1.0 / t, 1.0 / (1.0 - t)], t)


class MaskedHead(torch.nn.Module):
    """``forward(noisy, valid, masked) -> logits (n_masked, V)``: the shifted predictions at masked positions.

    Training calls the network through this wrapper's ``forward`` so that accelerate's DDP / FSDP wrappers see
    the whole computation (they synchronise gradients and gather shards around ``forward`` calls only).
    """

    def __init__(self, core) -> None:
        super().__init__()
        self.core = core

    def forward(
        self, noisy: torch.Tensor, valid: torch.Tensor | None, masked: torch.Tensor, causal: bool = False
    ) -> torch.Tensor:
        hidden = self.core.hidden_states(noisy, valid, causal=causal)
        rows, cols = masked.nonzero(as_tuple=True)
        return self.core.lm_head(hidden[rows, (cols - 1).clamp(min=0)]).float()


def masked_logprobs(
    head, ids: torch.Tensor, valid: torch.Tensor | None, masked: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """(B, L) log p(ids[b, i]) at ``masked`` positions with those positions replaced by the mask id; 0 elsewhere.

    ``head`` is a :class:`MaskedHead` (possibly wrapped by accelerate) or a bare :class:`DreamModel`.
    """
    if hasattr(head, "hidden_states"):
        head = MaskedHead(head)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = head(noisy, valid, masked)
    rows, cols = masked.nonzero(as_tuple=True)
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[rows, cols][:, None]).squeeze(-1)
    out = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    out[rows, cols] = lp
    return out


def estimate_logprobs(
    model, ids: torch.Tensor, valid: torch.Tensor | None, plan: MaskPlan, mask_id: int
) -> torch.Tensor:
    """(B, L) per-token estimates ``weight * log p`` on the plan's scored positions (0 elsewhere).

    All passes run in one forward over ``len(plan.masks) * B`` rows.
    """
    k = len(plan.masks)
    b = ids.shape[0]
    big_ids = ids.repeat(k, 1)
    big_valid = valid.repeat(k, 1) if valid is not None else None
    big_mask = torch.cat(plan.masks, dim=0).to(ids.device)
    lp = masked_logprobs(model, big_ids, big_valid, big_mask, mask_id)
    est = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    for j in range(k):
        w = plan.weights[j].to(ids.device)[:, None]
        est = est + lp[j * b : (j + 1) * b] * w * plan.masks[j].to(ids.device)
    return est


def sequence_estimate(est: torch.Tensor, plan: MaskPlan) -> torch.Tensor:
    """Per-pass average of the summed token estimates: comparable between coupled (2 passes) and single (1)."""
    return est.sum(1) / len(plan.masks)


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """Advantages ``r_i - mean_{j != i} r_j`` over the last dim (a prompt's G completions); G must be >= 2."""
    g = rewards.shape[-1]
    if g < 2:
        raise ValueError("leave-one-out advantages need at least 2 completions per prompt")
    total = rewards.sum(-1, keepdim=True)
    return rewards - (total - rewards) / (g - 1)


@dataclass
class LossParts:
    loss: torch.Tensor
    kl: float
    clip_fraction: float
    ratio_mean: float


def grpo_loss(
    lp: torch.Tensor,
    lp_old: torch.Tensor,
    lp_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    scored: torch.Tensor,
    clip_eps: float = 0.5,
    beta: float = 0.01,
) -> LossParts:
    """The clipped GRPO objective (negated, to minimise) over per-token estimates (B, L) and advantages (B,)."""
    scored = scored.to(lp.device).float()
    adv = advantages.to(lp.device).float()[:, None]
    ratio = torch.exp(lp - lp_old)
    s1 = ratio * adv
    s2 = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    obj = torch.minimum(s1, s2)
    if lp_ref is not None and beta:
        d = lp_ref - lp
        kl = torch.exp(d) - d - 1
    else:
        kl = torch.zeros_like(lp)
    per_tok = -(obj - beta * kl)
    count = scored.sum(1).clamp(min=1)
    per_seq = (per_tok * scored).sum(1) / count
    loss = per_seq.mean()
    with torch.no_grad():
        n = scored.sum().clamp(min=1)
        clipped = ((s2 < s1).float() * scored).sum() / n
        kl_mean = (kl * scored).sum() / n
        ratio_mean = (ratio * scored).sum() / n
    return LossParts(loss, float(kl_mean), float(clipped), float(ratio_mean))
