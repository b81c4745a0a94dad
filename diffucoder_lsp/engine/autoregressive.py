"""The autoregressive baseline: the same network with a causal mask and a KV cache, one token per pass.

This is "what users use instead" in ``diffucoder bench``: an AR model of the same size and shape reading the
same context (prefix and suffix, as a fill-in-the-middle prompt would) and generating the same number of
tokens. Only its speed is meaningful: the diffusion weights were not trained to predict left to right.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..model.network import DreamModel, project


@torch.no_grad()
def ar_steps(model: DreamModel, prompt: torch.Tensor, max_new_tokens: int) -> Iterator[torch.Tensor]:
    """Greedy tokens (B, 1) after ``prompt`` (B, L), one per forward pass with a KV cache; the caller stops
    early by closing the generator (prefix-only baseline of ``eval``)."""
    if max_new_tokens < 1:
        return
    b, n = prompt.shape
    hidden, kvs = model.hidden_states(prompt, causal=True, return_kv=True)
    token = project(model.lm_head, hidden[:, -1]).argmax(-1, keepdim=True)
    ones = torch.ones(b, 1, dtype=torch.bool, device=prompt.device)
    for i in range(max_new_tokens):
        yield token
        if i == max_new_tokens - 1:
            return
        past_valid = torch.ones(b, n + i, dtype=torch.bool, device=prompt.device)
        position = torch.full((b, 1), n + i, dtype=torch.long, device=prompt.device)
        hidden, new = model.hidden_states(
            token, ones, position, extra_kv=kvs, extra_valid=past_valid, causal=True, return_kv=True
        )
        kvs = [
            (torch.cat([k, nk], dim=2), torch.cat([v, nv], dim=2))
            for (k, v), (nk, nv) in zip(kvs, new, strict=True)
        ]
        token = project(model.lm_head, hidden[:, -1]).argmax(-1, keepdim=True)


@torch.no_grad()
def ar_generate(model: DreamModel, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, int]:
    """Greedy-decode ``new_tokens`` after ``prompt`` (1, L). Returns (tokens (1, new_tokens), forward passes)."""
    if new_tokens < 1:
        return prompt.new_zeros((prompt.shape[0], 0)), 0
    out = list(ar_steps(model, prompt, new_tokens))
    return torch.cat(out, dim=1), len(out)
