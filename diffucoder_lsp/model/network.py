"""The DiffuCoder / Dream network: a Qwen2 decoder whose attention is fully bidirectional.

Parameter names follow ``Qwen2ForCausalLM`` exactly (``model.layers.{i}.self_attn.q_proj.weight`` ...) so a real
checkpoint loads with ``strict=True``. The model keeps its autoregressive head: the prediction for position ``i``
is read from the output at ``i - 1`` (see :func:`shift_logits`). The network itself returns unshifted logits so it
can be compared one to one with a Hugging Face Qwen2 run.

Attention layers accept an optional block of extra keys/values (``extra_kv``) placed before the layer's own
keys: that is the slot a context cache uses (issue: fast inference), the exact path leaves it empty.

**Learned lookahead** (``ModelConfig.learned_lookahead``, our extension; DiffuCoder and Dream leave it off): every
attention head adds a learned bias to its scores for keys at *later* positions than the query. At a very negative
bias the network is exactly its causal self, so a pretrained AR model adapted this way starts as the AR model it
was (decoded left to right it writes what the AR model writes) instead of the much worse model that full
attention makes of it on step 0; training then opens each head to the text after it as far as that helps. It
is the learned form of DiffuLLaMA's causal-to-full anneal, and it is what lets a CPU-sized adaptation keep the
base's quality (``train/adapt.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

KV = tuple[torch.Tensor, torch.Tensor]


class KVSlots(NamedTuple):
    """Extra keys/values (B, KV, M + N, D) whose last N slots are left for the call's own N positions.

    A cached denoising step attends to the whole context in every layer; with a plain ``extra_kv`` block the
    layer concatenates context and own keys/values, a copy of the context per layer per step (2-7 % of a
    cached step on a 2-core CPU). With slots the layer writes its own keys/values into the tail in place.
    """

    k: torch.Tensor
    v: torch.Tensor


class KVInPlace(NamedTuple):
    """Keys/values (B, KV, L, D) of every position of the canvases, the call's own positions among them: query
    slot ``slots[i]`` of row ``rows[i]`` is canvas column ``cols[i]`` (flat, one entry per real query; padded
    query slots have none). The layer writes its own keys/values there and attends to all L.

    A cached step that moves on (blocks of one position move every step) used to gather the context's
    keys/values out of the canvas into a block of their own and append the step's: several copies of the whole
    context per layer per step, ~27 % of a step of the bundled model at 440 tokens on a 2-core CPU. Attention
    does not depend on the order of its keys (their positions are in the rotary phases and the lookahead's
    ``future`` mask), so the canvas-ordered keys/values serve as they are.
    """

    k: torch.Tensor
    v: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    slots: torch.Tensor


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Move predictions one position right: position i is predicted by the output at i - 1."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def positions_from_valid(valid: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: cumsum(valid) - 1, clamped so pads sit at 0."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def attention_mask_from_valid(valid_q: torch.Tensor, valid_k: torch.Tensor) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, Lq, Lk): a valid query sees valid keys only.

    An invalid (padding) query is allowed to see every key instead of none: a row with no visible key makes SDPA
    return NaN, and NaN in a padded row used to poison whole batches upstream ("!!!!" outputs). Padding outputs are
    never read, so what they attend to does not matter.
    """
    return (valid_k[:, None, None, :] | ~valid_q[:, None, :, None]).contiguous()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(
    cfg: ModelConfig, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for ``positions`` (B, L), computed in fp32 and cast, as Qwen2 does."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (
        cfg.rope_theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    )
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


# Below this many queries, attention on the CPU runs as two grouped matmuls instead of SDPA: torch's CPU flash
# kernel pays a fixed cost per key block that dominates when a few dozen hole tokens attend to a long cached
# context (measured, 2 cores, bf16, 33 queries x 1089 keys: SDPA 0.67 ms, grouped matmuls 0.35 ms; at 4k keys
# 2.2 vs 0.7 ms). Full-canvas passes keep SDPA, which wins there (1056 x 1056: 8.6 vs 20 ms).
SHORT_QUERY_ATTENTION = 128

# A learned lookahead's additive scores are (B, H, N, K) floats: 38 MB per layer for a 1k-token pass of the
# bundled model, the largest buffer of the pass and a share of a server's peak memory. At inference on the CPU
# the queries go through SDPA this many at a time, each chunk's scores in a buffer of that size (two buffers of
# 4.8 MB at 1k tokens), with the same outputs.
LOOKAHEAD_QUERY_CHUNK = 128

# up to this many rows, a CPU inference linear computes W @ x.T (see project)
SMALL_ROWS = 8


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; for a plain ``nn.Linear`` on a CPU without autograd and 2..``SMALL_ROWS`` rows of ``x``,
    computed as ``W @ x.T`` instead.

    Why: a few rows are what a cached step of a batch, a speculative step and the LM head over a few positions
    multiply, and MKL's fp32 kernels take ``x @ W.T`` with 2-8 rows through a matrix path that packs every
    weight first, about twice the time of one row's vector product. With the weight as the left operand the
    same product streams the weight once: measured on a 2-core AVX2 CPU over the bundled model's 210 layer
    weights, 2 rows 55.6 -> 29.0 ms, 4 rows 57.5 -> 31.2 ms, 8 rows 53.1 -> 48.8 ms (one row 32 ms either way,
    12 rows slower than ``F.linear``); its LM head over 2-4 rows 22 -> 7-8 ms. Other layers (quantized,
    LoRA-wrapped), devices, row counts, and anything recording a gradient take ``layer(x)`` unchanged."""
    if type(layer) is not nn.Linear or x.device.type != "cpu" or torch.is_grad_enabled():
        return layer(x)
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not 1 < rows <= SMALL_ROWS:
        return layer(x)
    out = torch.mm(layer.weight, x.reshape(rows, x.shape[-1]).t()).t()
    if layer.bias is not None:
        out = out + layer.bias
    return out.contiguous().view(*x.shape[:-1], out.shape[-1])


# the lookahead bias a new head starts from: causal to float precision (exp(-12) ~ 6e-6 of a key's weight) yet
# still with a gradient that Adam's step can follow
LOOKAHEAD_INIT = -12.0


def lookahead_mask(
    bias: torch.Tensor,
    future: torch.Tensor,
    mask: torch.Tensor | None,
    dtype: torch.dtype,
    scratch: dict[tuple, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Additive (B, H, N, K) scores: ``bias[h]`` where the key is later than the query, -inf where ``mask``
    (B, 1, N, K) forbids the pair, else 0.

    ``scratch``: one forward pass's buffers, by shape, reused from layer to layer when no gradient is recorded
    (a buffer saved for backward must not be overwritten). A 1k-token pass needs a 38 MB buffer per layer, and
    a fresh allocation that size comes from the system zeroed, page by page: on a 2-core CPU that cost 25 ms a
    layer, ~0.7 s of a 2.7 s context pass, against 3 ms for writing into memory already mapped."""
    shape = (future.shape[0], bias.shape[0], future.shape[2], future.shape[3])
    if scratch is None or torch.is_grad_enabled():
        add = future.to(dtype) * bias.to(dtype).view(1, -1, 1, 1)
        return add if mask is None else add.masked_fill(~mask, float("-inf"))
    key = (shape, dtype, future.device)
    out = scratch.get(key)
    if out is None:
        out = scratch[key] = torch.empty(shape, dtype=dtype, device=future.device)
    torch.mul(future, bias.to(dtype).view(1, -1, 1, 1), out=out)
    return out if mask is None else out.masked_fill_(~mask, float("-inf"))


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Softmax attention of q (B, H, N, D) over GQA keys/values (B, KV, M, D) without repeating them.

    The H query heads are folded into KV groups of H/KV heads (head h reads kv head h // (H/KV), as
    ``repeat_interleave`` would), scores are computed in the input dtype and normalised in fp32 (as Qwen2's
    eager attention). ``mask`` (B, 1, N, M) is True where a query may attend; a float mask (B, H, N, M) is added
    to the scores instead (the learned lookahead).
    """
    b, h, n, d = q.shape
    kv = k.shape[1]
    r = h // kv
    scores = torch.matmul(q.reshape(b, kv, r * n, d), k.transpose(-1, -2)).float() * (d**-0.5)
    if mask is not None and mask.dtype != torch.bool:
        scores = (scores.view(b, kv, r, n, -1) + mask.float().view(b, kv, r, n, -1)).view(b, kv, r * n, -1)
    elif mask is not None:
        scores = scores.view(b, kv, r, n, -1).masked_fill(~mask[:, :, None], float("-inf"))
        scores = scores.view(b, kv, r * n, -1)
    probs = scores.softmax(-1).to(v.dtype)
    return torch.matmul(probs, v).view(b, h, n, d)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=False)
        if cfg.learned_lookahead:
            self.lookahead_bias = nn.Parameter(torch.full((self.n_heads,), LOOKAHEAD_INIT))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        extra_kv: KV | None = None,
        causal: bool = False,
        keep: torch.Tensor | None = None,
        future: torch.Tensor | None = None,
        scratch: dict[tuple, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """Attention output (B, N', H) and this call's own (k, v) (after RoPE) for every input position.

        ``keep`` (B, N') selects the query positions whose output is wanted: keys/values still come from all
        N inputs. A context pass uses it in its last layer, where only the hole positions are read. ``future``
        (B, 1, N, K) marks the keys later than each query (learned lookahead only).
        """
        b, n, _ = x.shape
        k = project(self.k_proj, x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        v = project(self.v_proj, x).view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
        k = apply_rope(k, cos, sin)
        if keep is not None:
            x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
            g = keep[:, None, :, None].expand(-1, 1, -1, cos.shape[-1])
            cos, sin = cos.gather(2, g), sin.gather(2, g)
            if mask is not None:
                mask = mask.gather(2, keep[:, None, :, None].expand(-1, 1, -1, mask.shape[-1]))
            if future is not None:
                future = future.gather(2, keep[:, None, :, None].expand(-1, 1, -1, future.shape[-1]))
        nq = x.shape[1]
        q = project(self.q_proj, x).view(b, nq, self.n_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        own_kv = (k, v)
        if isinstance(extra_kv, KVInPlace):
            rows, cols, slots = extra_kv.rows, extra_kv.cols, extra_kv.slots
            extra_kv.k.transpose(1, 2)[rows, cols] = k.transpose(1, 2)[rows, slots]
            extra_kv.v.transpose(1, 2)[rows, cols] = v.transpose(1, 2)[rows, slots]
            k, v = extra_kv.k, extra_kv.v
        elif isinstance(extra_kv, KVSlots):
            extra_kv.k[:, :, -n:].copy_(k)
            extra_kv.v[:, :, -n:].copy_(v)
            k, v = extra_kv.k, extra_kv.v
        elif extra_kv is not None:
            k = torch.cat([extra_kv[0], k], dim=2)
            v = torch.cat([extra_kv[1], v], dim=2)
        lookahead = future is not None and not causal
        if lookahead and x.device.type == "cpu" and nq > LOOKAHEAD_QUERY_CHUNK and scratch is not None:
            out = self._lookahead_in_chunks(q, k, v, mask, future, scratch)
        else:
            if lookahead:
                mask = lookahead_mask(self.lookahead_bias, future, mask, q.dtype, scratch)
            out = self._attend(q, k, v, mask, causal)
        out = out.transpose(1, 2).reshape(b, nq, self.n_heads * self.head_dim)
        return project(self.o_proj, out), own_kv

    def _attend(self, q, k, v, mask, causal: bool) -> torch.Tensor:
        if q.device.type == "cpu" and q.shape[2] <= SHORT_QUERY_ATTENTION and not (causal and mask is None):
            return grouped_attention(q, k, v, mask)
        if q.device.type == "cpu":
            # SDPA's own GQA, without copying keys/values per query head (1k tokens: 14.3 -> 12.9 ms per layer
            # here); other devices keep the copy, since not every GPU kernel takes enable_gqa (unmeasured there)
            gqa = self.n_kv != self.n_heads
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None, enable_gqa=gqa
            )
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)

    def _lookahead_in_chunks(self, q, k, v, mask, future, scratch) -> torch.Tensor:
        """SDPA over ``LOOKAHEAD_QUERY_CHUNK`` queries at a time, each chunk's lookahead scores built alone."""
        outs = []
        for i in range(0, q.shape[2], LOOKAHEAD_QUERY_CHUNK):
            rows = slice(i, i + LOOKAHEAD_QUERY_CHUNK)
            part = None if mask is None else mask[:, :, rows]
            add = lookahead_mask(self.lookahead_bias, future[:, :, rows], part, q.dtype, scratch)
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, :, rows], k, v, attn_mask=add, enable_gqa=self.n_kv != self.n_heads
                )
            )
        return torch.cat(outs, dim=2)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # inference: in place, two fewer (tokens x intermediate) buffers; a 1k-token context pass on a 2-core
        # CPU spends 12.0 -> 9.9 ms per layer in the MLP (autograd needs the out-of-place form above)
        hidden = project(self.gate_proj, x)
        F.silu(hidden, inplace=True)
        return project(self.down_proj, hidden.mul_(project(self.up_proj, x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, extra_kv=None, causal=False, keep=None, future=None, scratch=None):
        attn, kv = self.self_attn(
            self.input_layernorm(x), cos, sin, mask, extra_kv, causal, keep, future, scratch
        )
        if keep is not None:
            x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


class Backbone(nn.Module):
    """``model.*`` in the state dict: embeddings, layers, final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # Checkpoint loading builds the model on the meta device, where torch's random init of the embedding does
        # no work but its first call imports torch._dynamo: 2.5-3.3 s of every load on a 2-core CPU. An empty
        # weight there skips that init; on a real device the usual init runs.
        weight = None
        if torch.get_default_device().type == "meta":
            weight = torch.empty(cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=weight)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DreamModel(nn.Module):
    """Bidirectional Qwen2 with an untied LM head. ``forward`` returns unshifted logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        valid: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        extra_kv: list[KV] | None = None,
        extra_valid: torch.Tensor | None = None,
        causal: bool = False,
        return_kv: bool = False,
        keep: torch.Tensor | None = None,
        should_stop: Callable[[], bool] | None = None,
        attn_mask: torch.Tensor | None = None,
        extra_positions: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[KV]] | None:
        """Final-norm hidden states (B, L, H), or (B, N', H) at the positions ``keep`` (B, N') selects.

        ``valid`` (B, L) marks real tokens (False = padding). ``extra_kv`` is a per-layer block of keys/values
        already computed for other positions (``extra_valid`` marks which of them are real); queries attend to
        them and to ``input_ids``; a list of :class:`KVInPlace` holds ``input_ids``' own keys/values too (at its
        ``cols``), and ``extra_valid`` / ``extra_positions`` then describe all its keys. ``causal`` turns the
        network into the autoregressive baseline. With ``keep`` the last layer computes queries (attention and
        MLP) only for the kept positions: every layer's keys and values are still complete, and a context-cache
        pass that reads a few hole positions saves ~1/L of its work. ``should_stop`` is asked before every
        layer; when it says yes the pass is abandoned and None returned (background work that a request must not
        wait for). ``attn_mask`` (B or 1, 1, L, L), True where a query may attend, is combined with the padding
        mask: adapting an AR model anneals from causal to full attention through it (``train/adapt.py``). A model
        with a learned lookahead needs the positions of the ``extra_kv`` keys too (``extra_positions``, (B, M)):
        its bias depends on which keys are later.
        """
        b, n = input_ids.shape
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=input_ids.device)
        if position_ids is None:
            position_ids = positions_from_valid(valid)
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(self.config, position_ids, x.dtype)
        # in place: the call's own keys/values are among the extra ones (see KVInPlace)
        in_place = extra_kv is not None and isinstance(extra_kv[0], KVInPlace)
        if in_place and (causal or extra_valid is None):
            raise ValueError("in-place keys/values take their extra_valid, and no causal mask")
        if in_place:
            keys_valid = extra_valid
        else:
            keys_valid = valid if extra_valid is None else torch.cat([extra_valid, valid], dim=1)
        mask = None
        if causal:
            m = extra_valid.shape[1] if extra_valid is not None else 0
            causal_mask = torch.ones(n, m + n, dtype=torch.bool, device=x.device).tril(m)
            mask = attention_mask_from_valid(valid, keys_valid) & causal_mask
        elif not bool(keys_valid.all()):
            mask = attention_mask_from_valid(valid, keys_valid)
        if attn_mask is not None:
            pad = attention_mask_from_valid(valid, keys_valid)
            mask = (attn_mask & pad) if mask is None else (mask & attn_mask)
            # a query must see at least itself, else SDPA returns NaN for its row
            keys = mask.shape[-1]
            own = torch.zeros(n, keys, dtype=torch.bool, device=x.device)
            own[torch.arange(n), torch.arange(keys - n, keys)] = True
            mask = mask | own
        future = None
        if self.config.learned_lookahead and not causal:
            key_pos = position_ids
            if extra_kv is not None:
                if extra_positions is None:
                    raise ValueError("a learned-lookahead model needs extra_positions with extra_kv")
                key_pos = extra_positions if in_place else torch.cat([extra_positions, position_ids], dim=1)
            future = (key_pos[:, None, None, :] > position_ids[:, None, :, None]).contiguous()
        kvs: list[KV] = []
        scratch: dict[tuple, torch.Tensor] = {}  # this pass's reusable buffers (see lookahead_mask)
        last = len(self.model.layers) - 1
        for i, layer in enumerate(self.model.layers):
            if should_stop is not None and should_stop():
                return None
            extra = extra_kv[i] if extra_kv is not None else None
            x, kv = layer(x, cos, sin, mask, extra, causal, keep if i == last else None, future, scratch)
            if return_kv:
                kvs.append(kv)
        x = self.model.norm(x)
        return (x, kvs) if return_kv else x

    def forward(
        self,
        input_ids: torch.Tensor,
        valid: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return project(self.lm_head, self.hidden_states(input_ids, valid, position_ids))

    def denoise_logits(self, input_ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Shifted logits over the whole canvas: entry i is the model's prediction for token i."""
        return shift_logits(self(input_ids, valid))
