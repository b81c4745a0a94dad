"""Write a random tiny checkpoint in the exact Hugging Face layout of a DiffuCoder checkpoint.

Tests (and ``diffucoder make-tiny``) use it to exercise the real loading code without real weights: a
``config.json`` with ``model_type: "Dream"``, weights split over several safetensors shards with a
``model.safetensors.index.json``, a byte-level BPE ``tokenizer.json`` carrying DiffuCoder's special-token names,
the side files a real checkpoint has, and a remote-code ``.py`` file that must never be executed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import ModelConfig
from .network import DreamModel
from .tokenizer import DLM_PAD, EOS, MASK, SPECIAL_TOKENS, train_bpe

# A little Python for the tiny tokenizer's merges: enough that code becomes a few hundred tokens, not bytes.
_SAMPLE = '''
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()


total = 0
for i in range(10):
    total += fibonacci(i)
import os, sys, json
with open(path, "r", encoding="utf-8") as f:
    data = json.load(f)
return {key: value for key, value in data.items() if value is not None}
'''

REMOTE_CODE = """raise RuntimeError("remote code from a checkpoint must never be executed")\n"""


def tiny_config(vocab_size: int, mask_id: int, eos_id: int, **overrides) -> ModelConfig:
    base = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        mask_token_id=mask_id,
        pad_token_id=eos_id,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
    )
    base.update(overrides)
    return ModelConfig(**base)


def write_tiny_checkpoint(
    folder: str | Path,
    *,
    shards: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    tokenizer_vocab: int = 320,
    extra_vocab: int = 64,
    device: str | torch.device = "cpu",
    **config_overrides,
) -> Path:
    """Create ``folder`` holding a random model of DiffuCoder's architecture, sharded ``shards`` ways.

    The model's vocabulary is ``extra_vocab`` ids larger than the tokenizer's, as in the real checkpoints
    (152064 logits for ~151.7k tokens), so code that samples past the tokenizer shows up in tests.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_bpe([_SAMPLE] * 4, vocab_size=tokenizer_vocab, min_frequency=1)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    vocab = max(n_tok, config_overrides.pop("vocab_size", n_tok + extra_vocab))  # a real shape fixes it
    cfg = tiny_config(vocab, tok.token_to_id(MASK), tok.token_to_id(EOS), **config_overrides)

    torch.manual_seed(seed)
    with torch.device(device):  # a GPU makes the 7B shape's random weights in seconds
        model = DreamModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
            else:
                p.normal_(0.0, 0.08)
    state = {k: v.detach().to(dtype).cpu().contiguous() for k, v in model.state_dict().items()}
    del model
    write_sharded_safetensors(folder, state, shards)
    tok.save(str(folder / "tokenizer.json"))
    cfg_dict = cfg.to_dict()
    cfg_dict["torch_dtype"] = str(dtype).removeprefix("torch.")
    cfg_dict["auto_map"] = {
        "AutoModel": "modeling_dream.DreamModel",
        "AutoConfig": "configuration_dream.DreamConfig",
    }
    write_side_files(folder, cfg_dict, tok)
    (folder / "modeling_dream.py").write_text(REMOTE_CODE)
    return folder


def write_sharded_safetensors(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    """Write ``state`` as ``model-0000i-of-0000n.safetensors`` plus the index, as HF does (one file if n == 1)."""
    names = list(state)
    if shards <= 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(folder / fname), metadata={"format": "pt"})
        for k in part:
            weight_map[k] = fname
            total += state[k].numel() * state[k].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_side_files(folder: Path, cfg_dict: dict, tok) -> None:
    """config.json and the tokenizer side files (tokenizer_config, added_tokens, generation_config...)."""
    (folder / "config.json").write_text(json.dumps(cfg_dict, indent=2))
    added = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    (folder / "added_tokens.json").write_text(json.dumps(added, indent=2))
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": EOS,
        "pad_token": EOS,
        "mask_token": MASK,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (EOS, MASK)],
        "model_max_length": cfg_dict.get("max_position_embeddings", 2048),
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False, "normalized": False}
            for t, i in added.items()
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    special_map = {
        "eos_token": EOS,
        "pad_token": EOS,
        "mask_token": MASK,
        "additional_special_tokens": [DLM_PAD],
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    gen = {"eos_token_id": cfg_dict["eos_token_id"], "pad_token_id": cfg_dict["pad_token_id"]}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
