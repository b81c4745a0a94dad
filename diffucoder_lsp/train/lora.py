"""LoRA adapters (through peft) on a :class:`DreamModel`, merging, and writing fine-tuned checkpoints.

Why these choices:

- **peft's low-level injection** (``inject_adapter_in_model``) instead of ``get_peft_model``: our network is
  a plain ``nn.Module`` with its own config class, not a transformers ``PreTrainedModel``; injection replaces
  the target ``nn.Linear`` layers in place and leaves every other module (and our ``hidden_states`` API) as it
  is, so the training loss, the engine's sampler and evaluation all run on the adapted model unchanged.
- **Targets** q/k/v/o and gate/up/down projections: every linear of the decoder, as is usual for code LoRA.
- **Merge on export**: the adapter is folded into the base weights (``W + B A * alpha / r``) and the LoRA
  wrappers are removed, so the exported folder has exactly the state-dict keys of the base checkpoint and
  :func:`diffucoder_lsp.model.loading.load_model` (hence ``fill``, the server, the demo) reads it directly.
  The adapter alone is also written (``adapter_model.safetensors`` + ``adapter_config.json``, peft's key
  naming) for users who keep one base model and several adapters; :func:`load_adapter` applies one at load.
- The exported folder copies the base checkpoint's tokenizer and side files but never its ``*.py`` files
  (remote code) nor pickle weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from pathlib import Path

import torch
from torch import nn

from ..errors import BadInputError

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def _peft():
    try:
        import peft
    except ImportError as exc:
        raise BadInputError(
            "LoRA needs peft: pip install 'diffucoder-lsp[train]' (or pip install peft)"
        ) from exc
    return peft


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, targets=LORA_TARGETS):
    peft = _peft()
    return peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none"
    )


def apply_lora(model: nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.05, targets=LORA_TARGETS):
    """Inject LoRA layers into ``model`` in place; only the adapter weights stay trainable. Returns the config."""
    peft = _peft()
    cfg = lora_config(r, alpha, dropout, targets)
    peft.inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_train == 0:
        raise BadInputError(f"LoRA found none of the target modules {list(targets)} in the model")
    log.info("LoRA r=%d alpha=%d on %s: %d trainable parameters", r, alpha, ",".join(targets), n_train)
    return cfg


def has_lora(model: nn.Module) -> bool:
    return any("lora_" in n for n, _ in model.named_parameters())


def _tuner_layers(model: nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model (LoRA layers bypassed) inside the block; a no-op for a model without LoRA."""
    if not has_lora(model):
        yield model
        return
    layers = _tuner_layers(model)
    for _, m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for _, m in layers:
            m.enable_adapters(True)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base linear and put the plain linear back (in place)."""
    if not has_lora(model):
        return model
    for name, layer in _tuner_layers(model):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under peft's saved names (``base_model.model.<path>.lora_A.weight``)."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            key = "base_model.model." + name.replace(".default.", ".")
            out[key] = p.detach().cpu().contiguous()
    return out


def save_adapter(model: nn.Module, cfg, out: str | Path, base: str | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    d = cfg.to_dict()
    d = {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}
    d["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(d, indent=2, default=str))
    return out


def load_adapter(model: nn.Module, folder: str | Path, merge: bool = True) -> nn.Module:
    """Apply a saved adapter folder to a loaded :class:`DreamModel` (merged into the weights by default)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        conf = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        weights = load_file(str(folder / "adapter_model.safetensors"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{folder} is not an adapter folder: {exc}") from exc
    apply_lora(model, conf["r"], conf["lora_alpha"], 0.0, conf["target_modules"])
    params = dict(model.named_parameters())
    for key, value in weights.items():
        name = key.removeprefix("base_model.model.")
        name = name.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        if name not in params:
            raise BadInputError(f"adapter weight {key} does not fit this model")
        with torch.no_grad():
            params[name].copy_(value.to(params[name].dtype))
    return merge_lora(model) if merge else model


def export_checkpoint(
    model: nn.Module,
    source: str | Path,
    out: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    meta: dict | None = None,
    max_shard_bytes: int = 2 * 2**30,
) -> Path:
    """Write ``model`` (merged, no LoRA wrappers) as a HF-layout folder next to ``source``'s side files.

    Written into ``out.tmp`` and renamed, so an interrupted export never leaves a half folder that loads.
    """
    from ..model.tiny import write_sharded_safetensors

    if has_lora(model):
        raise ValueError("merge the adapters (merge_lora) before exporting a full checkpoint")
    source, out = Path(source), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    total = sum(v.numel() * v.element_size() for v in state.values())
    write_sharded_safetensors(tmp, state, max(1, math.ceil(total / max_shard_bytes)))
    cfg = json.loads((source / "config.json").read_text(encoding="utf-8"))
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("auto_map", None)  # our folder has no remote code to map to
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, tmp / name)
    if meta:
        (tmp / "training_state.json").write_text(json.dumps(meta, indent=2, default=str))
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out
