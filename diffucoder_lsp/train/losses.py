"""The masked diffusion loss (pretraining / SFT), as DiffuCoder and Dream define it.

Per sequence a noise level ``t = (1 - eps) * U(0, 1) + eps`` (eps = 1e-3) is drawn; every *trainable* token is
replaced by ``<|mask|>`` with probability ``t``; the model predicts the originals and the cross-entropy of each
masked token is weighted by ``1 / t``. That weighted sum is an upper bound on the negative log-likelihood, so its
value is comparable across runs.

**Normalisation**: the weighted sum over the batch is divided by the number of trainable tokens in the batch
(not by the number of masked tokens, which would undo the ``1/t`` weighting, and not per sequence, which would
up-weight short infill rows). For a batch of full packed windows this is LLaDA/Dream's ``sum / (B * L)``.

**Logit shift**: DiffuCoder keeps its autoregressive head, so the prediction for position ``i`` comes from the
network output at ``i - 1`` (position 0 from itself). To avoid the LM-head cost on unmasked positions, the loss
shifts the final hidden states (equivalent to shifting the logits, since the head acts per position) and
applies the head only to masked positions; a test pins the equivalence with ``DreamModel.denoise_logits``.

The coupled-GRPO estimator of later issues belongs beside this function: it reuses :func:`apply_noise` with a
complementary mask pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EPS = 1e-3


@dataclass
class LossStats:
    """Diagnostics of one loss evaluation (plain floats / ints, cheap to log)."""

    loss: float  # the optimised, 1/t weighted loss per trainable token
    ce: float  # unweighted mean cross-entropy over masked tokens
    accuracy: float  # argmax accuracy over masked tokens
    masked: int
    trainable: int
    mean_t: float


def sample_t(batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Noise level per sequence: ``(1 - eps) * U(0, 1) + eps``, in (eps, 1]."""
    u = torch.rand(batch, generator=generator, device=device)
    return (1 - EPS) * u + EPS


def apply_noise(
    input_ids: torch.Tensor,
    trainable: torch.Tensor,
    t: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each trainable token with probability ``t`` of its row. Returns (noisy ids, masked positions)."""
    u = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    masked = trainable & (u < t[:, None])
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids), masked


def apply_ordered_noise(
    input_ids: torch.Tensor, trainable: torch.Tensor, t: torch.Tensor, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask the last ``t`` share of each row's trainable tokens (at least one when the row has any): the canvas
    left-to-right decoding sees, the hole written up to a point and masked after it.

    Why: the editor and ``fill`` decode a hole left to right, one token per step, so every prediction they make
    is of the first masked token after a written stretch. Random masks (:func:`apply_noise`) put such a state in
    a row only by chance, and fine-tuning on them raised a repository's masked-token accuracy without moving its
    held-out lines. (Measured on click, ten CPU minutes: these masks did not move them either; docs/training.md.)
    Returns (noisy ids, masked)."""
    order = trainable.long().cumsum(1)  # 1-based rank of each trainable token within its row
    count = order[:, -1:]
    keep = ((1.0 - t[:, None]) * count).floor().clamp(max=(count - 1).clamp(min=0))
    masked = trainable & (order > keep)
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids), masked


def masked_diffusion_loss(
    model,
    input_ids: torch.Tensor,
    trainable_mask: torch.Tensor,
    valid: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    t: torch.Tensor | None = None,
    masked: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Masked diffusion loss of ``model`` (a :class:`DreamModel`, possibly wrapped) on one batch.

    ``trainable_mask`` (B, L) bool marks the tokens that may be masked and scored (all real tokens in
    pretraining, span + pads of infill rows, the response in SFT). ``valid`` marks non-padding positions.
    ``t`` (B,) and ``masked`` (B, L) may be given to fix the noise (tests, low-variance validation); otherwise
    they are drawn from ``generator``. Positions outside ``trainable_mask`` are never masked. ``attn_mask``
    restricts attention (adaptation's causal-to-full annealing; see ``DreamModel.hidden_states``).
    """
    trainable_mask = trainable_mask.bool()
    if valid is not None:
        trainable_mask = trainable_mask & valid.bool()
    core = model.module if hasattr(model, "module") else model
    mask_id = core.config.mask_token_id
    b = input_ids.shape[0]
    if t is None:
        t = sample_t(b, generator, device=input_ids.device)
    t = t.to(device=input_ids.device, dtype=torch.float32)
    if masked is None:
        noisy, masked = apply_noise(input_ids, trainable_mask, t, mask_id, generator)
    else:
        masked = masked.bool() & trainable_mask
        noisy = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)

    hidden = core.hidden_states(noisy, valid, attn_mask=attn_mask)
    hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)  # the logit shift, applied before the head
    logits = core.lm_head(hidden[masked]).float()
    targets = input_ids[masked]
    ce = F.cross_entropy(logits, targets, reduction="none")
    weights = (1.0 / t)[:, None].expand_as(masked)[masked]
    n_trainable = int(trainable_mask.sum())
    loss = (ce * weights).sum() / max(n_trainable, 1)
    with torch.no_grad():
        n_masked = int(masked.sum())
        stats = LossStats(
            loss=float(loss.detach()),
            ce=float(ce.mean()) if n_masked else 0.0,
            accuracy=float((logits.argmax(-1) == targets).float().mean()) if n_masked else 0.0,
            masked=n_masked,
            trainable=n_trainable,
            mean_t=float(t.mean()),
        )
    return loss, stats
