"""Denoisers: given a canvas, the logits the sampler needs at its masked positions.

The sampler only ever calls ``denoiser(x, valid, masked) -> logits (n_masked, V)`` (rows in row-major order of
``masked``). The full-canvas denoiser re-reads the whole canvas every step, as the reference does; a cached
denoiser (context keys/values computed once) implements the same call, so the sampler does not change.

A batch (B > 1) may have rows with nothing left to denoise: finished early, or retired by the sampler because
their caller left. The denoisers run only the rows that still have masked positions asked for: the logits come
back in the same row-major order (a row with nothing asked for contributes no row to them), and a finished
request stops costing forward-pass work at the next step instead of riding along to the end of the batch.

The logit shift lives here: the prediction for position ``i`` is the LM head applied to the hidden state at
``i - 1`` (position 0 reads itself). The head runs only at those positions: with a 152k vocabulary the head is
the largest matmul of a step, and the context positions never need it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..model.network import DreamModel, project


class Denoiser(Protocol):
    forward_passes: int

    def __call__(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor) -> torch.Tensor: ...


def shifted_rows(masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the hidden states that predict each masked position: col - 1, clamped at 0."""
    rows, cols = masked.nonzero(as_tuple=True)
    return rows, (cols - 1).clamp(min=0)


class FullCanvasDenoiser:
    """One forward pass over the whole canvas per step (the reference behaviour, exact)."""

    def __init__(self, model: DreamModel) -> None:
        self.model = model
        self.forward_passes = 0

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, valid: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        self.forward_passes += 1
        if x.shape[0] > 1:
            live = masked.any(1)
            if not bool(live.all()):
                x, valid, masked = x[live], valid[live], masked[live]
        hidden = self.model.hidden_states(x, valid)
        rows, cols = shifted_rows(masked)
        return project(self.model.lm_head, hidden[rows, cols]).float()
