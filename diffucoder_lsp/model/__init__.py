"""The model layer: config, network, tokenizer, checkpoint loading and quantization.

Re-exports the names other packages code against, so callers write ``from diffucoder_lsp.model import load_model``.
Importing this package imports torch but never bitsandbytes, accelerate or huggingface_hub (those load lazily).
"""

from .config import DIFFUCODER_7B, ModelConfig
from .loading import (
    LoadedModel,
    auto_dtype,
    cache_root,
    cpu_bf16_support,
    default_model_path,
    default_model_status,
    load_model,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
)
from .network import DreamModel, shift_logits
from .quant import QUANT_MODES, quant_support, quantize_model
from .tokenizer import CodeTokenizer

__all__ = [
    "DIFFUCODER_7B",
    "QUANT_MODES",
    "CodeTokenizer",
    "DreamModel",
    "LoadedModel",
    "ModelConfig",
    "auto_dtype",
    "cache_root",
    "cpu_bf16_support",
    "default_model_path",
    "default_model_status",
    "load_model",
    "quant_support",
    "quantize_model",
    "resolve_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "shift_logits",
]
