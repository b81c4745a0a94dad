"""Model configuration: a frozen dataclass read from a Hugging Face ``config.json``.

DiffuCoder / Dream checkpoints use Qwen2 field names with ``model_type: "Dream"``. We accept ``Dream`` and
``qwen2``-style configs (the architecture is the same network with attention made bidirectional) and refuse
anything else with a clear message, because loading an unrelated architecture would "work" and produce garbage.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, short_repr

SUPPORTED_MODEL_TYPES = ("Dream", "dream", "qwen2", "diffucoder")

__all__ = ["CheckpointError", "ModelConfig", "DIFFUCODER_7B"]

# generous bounds: the largest open models are well inside them, and a checkpoint beyond them is a mistake or an
# attack (a million layers are built, on the meta device, at ~44 KB each before any other check could run)
_INT_RANGES = {
    "vocab_size": (1, 10_000_000),
    "hidden_size": (1, 131_072),
    "intermediate_size": (1, 1_048_576),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 4096),
    "num_key_value_heads": (1, 4096),
    "head_dim": (1, 4096),
    "max_position_embeddings": (1, 100_000_000),
    "mask_token_id": (0, 10_000_000),
    "pad_token_id": (0, 10_000_000),
    "eos_token_id": (0, 10_000_000),
    "bos_token_id": (0, 10_000_000),
}
_OPTIONAL = frozenset({"head_dim", "bos_token_id"})
_FLOAT_RANGES = {"rms_norm_eps": (0.0, 1.0), "rope_theta": (0.0, 1e12)}


def _short(value: Any) -> str:
    return short_repr(value, 60)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    head_dim: int | None = None
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = True
    mask_token_id: int = 151666
    pad_token_id: int = 151643
    eos_token_id: int = 151643
    bos_token_id: int | None = 151643
    model_type: str = "Dream"
    torch_dtype: str = "bfloat16"
    # our extension, off for every DiffuCoder/Dream checkpoint: attention to keys at later positions gets a
    # learned per-head bias (``self_attn.lookahead_bias``); very negative = causal (see model/network.py)
    learned_lookahead: bool = False

    def __post_init__(self) -> None:
        self._check_fields()
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise CheckpointError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.hidden_act != "silu":
            raise CheckpointError(f"unsupported hidden_act {self.hidden_act!r} (only 'silu' is supported)")
        for tok in ("mask_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, tok)
            if not 0 <= value < self.vocab_size:
                raise CheckpointError(
                    f"{tok}={value} is outside the vocabulary (vocab_size={self.vocab_size})"
                )

    def _check_fields(self) -> None:
        """Every field's type and range, before anything is sized from them: a hostile or broken config.json
        (``num_hidden_layers: 1000000``, ``hidden_size: -256``, ``"576"``, ``576.0``, ``rms_norm_eps: -1``)
        is one CheckpointError, never a raw Python error or gigabytes of layers built before a check."""
        for name, (lo, hi) in _INT_RANGES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise CheckpointError(f"config.json: {name} must be an integer, got {_short(value)}")
            if not lo <= value <= hi:
                raise CheckpointError(f"config.json: {name} must be between {lo} and {hi:,}, got {value:,}")
        for name, (lo, hi) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CheckpointError(f"config.json: {name} must be a finite number, got {_short(value)}")
            if not lo < value < hi:
                raise CheckpointError(f"config.json: {name} must be in ({lo}, {hi}), got {value}")
        for name in ("tie_word_embeddings", "attention_bias", "learned_lookahead"):
            if not isinstance(getattr(self, name), bool):
                raise CheckpointError(
                    f"config.json: {name} must be true or false, got {_short(getattr(self, name))}"
                )
        for name in ("hidden_act", "model_type", "torch_dtype"):
            if not isinstance(getattr(self, name), str):
                raise CheckpointError(
                    f"config.json: {name} must be a string, got {_short(getattr(self, name))}"
                )

    @property
    def num_parameters(self) -> int:
        """Parameter count implied by the shapes (used for size estimates before loading)."""
        h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q = self.num_attention_heads * hd
        kv = self.num_key_value_heads * hd
        attn = h * q + q + 2 * (h * kv + kv) + q * h
        mlp = 3 * h * i
        layer = attn + mlp + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * layer + h + head

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"unsupported model_type {model_type!r}: expected a DiffuCoder/Dream checkpoint "
                f"(model_type 'Dream'; also accepted: {', '.join(SUPPORTED_MODEL_TYPES[1:])})"
            )
        if raw.get("sliding_window") and raw.get("use_sliding_window"):
            raise CheckpointError("sliding-window attention is not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        # Dream configs carry these; Qwen2 ones may not. eos may be a list in some configs: take the first.
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = kwargs[key][0] if kwargs[key] else None
        if kwargs.get("pad_token_id") is None:
            kwargs["pad_token_id"] = kwargs.get("eos_token_id", cls.pad_token_id)
        if kwargs.get("eos_token_id") is None:
            kwargs["eos_token_id"] = kwargs["pad_token_id"]
        if "attention_bias" not in raw:
            kwargs["attention_bias"] = True  # Qwen2 always has q/k/v bias
        try:
            return cls(**kwargs)
        except TypeError as exc:  # wrong value types in the json
            raise CheckpointError(f"invalid config.json: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        from .files import read_json

        path = Path(path)
        if not path.exists() and not path.is_symlink():
            raise CheckpointError(f"no config.json in {path.parent}")
        raw = read_json(path, "config.json", limit=1 << 20)
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path} does not hold a JSON object")
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """A config.json in the layout real DiffuCoder checkpoints use."""
        out = dataclasses.asdict(self)
        out["architectures"] = ["DreamModel"]
        out["model_type"] = "Dream"
        out["use_cache"] = False
        out["use_sliding_window"] = False
        return out


# The shape of apple/DiffuCoder-7B-* (see shared facts). Used by benchmarks with random weights.
DIFFUCODER_7B = ModelConfig()
