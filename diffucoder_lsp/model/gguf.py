"""Import a GGUF file (Llama- or Qwen2-architecture) as a DiffuCoder-layout checkpoint folder.

Why: small pretrained code LMs reach users as GGUF files (llama.cpp's format, often quantized). Masked-diffusion
coders are *adapted* AR models, so an AR base in GGUF is the natural starting point, and ``--model FILE.gguf``
lets a user try any such file with our decoder. The import is a one-time conversion into the layout every other
part of the project reads (``config.json`` with Qwen2 names, bf16 safetensors, ``tokenizer.json``):

* **Data, never code.** The file is parsed with the ``gguf`` package's reader (numpy memory maps: nothing is
  read until asked) and every tensor's name, shape, type and byte range is checked against the metadata
  *before* any tensor is dequantized, so a truncated or lying file fails in milliseconds with a clear message.
* **Un-permutation.** llama.cpp's converter permutes the rows of q/k projections of Llama models (its RoPE
  pairs adjacent dimensions, Hugging Face's pairs halves); we undo it per head. Qwen2 files are not permuted.
* **Names** map to ``Qwen2ForCausalLM``'s; a source without q/k/v biases gets zero biases (the Qwen2 shape),
  a source without ``output.weight`` has tied embeddings.
* **Tokenizer** is rebuilt from the file's vocabulary and merges with ``tokenizers`` (byte-level BPE), with the
  pre-tokenizer the file names (``tokenizer.ggml.pre``).
* **Mask token.** Masked diffusion needs ``<|mask|>``; when the vocabulary has none, one is appended as a new
  id whose embedding is the mean of the existing rows (the model has never seen it; training teaches it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from .config import ModelConfig
from .tokenizer import EOS, MASK

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# Tensor types we dequantize (the gguf package's numpy kernels); anything else is refused by name.
_MAX_DIM = 1 << 20  # no real transformer has a dimension this large: a lying header, not a model
_MAX_LAYERS = 1024

# Pre-tokenizer regexes by ``tokenizer.ggml.pre`` (public facts of each tokenizer family).
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_QWEN2_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class GGUFTensor:
    name: str  # GGUF name, e.g. blk.0.attn_q.weight
    shape: tuple[int, ...]  # torch order: (out, in)
    qtype: int
    data: np.ndarray  # raw bytes / values as the reader maps them (not yet read)


@dataclass(frozen=True)
class GGUFImport:
    """A checked GGUF file: our config, a tokenizer, and its tensors under our names (not yet dequantized)."""

    path: Path
    architecture: str
    config: ModelConfig
    tokenizer: object  # tokenizers.Tokenizer
    tensors: dict[str, GGUFTensor]  # keyed by our (Qwen2) names
    added_mask: bool
    source_vocab: int
    metadata: dict


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception as exc:
        raise CheckpointError(f"GGUF metadata {key} is unreadable: {exc}") from exc


def _int_field(reader, key: str, default=None, lo: int = 1, hi: int = _MAX_DIM) -> int:
    value = _field(reader, key, default)
    if value is None:
        raise CheckpointError(f"GGUF metadata lacks {key}")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise CheckpointError(f"GGUF metadata {key}={value!r} is not an integer in [{lo}, {hi}]")
    return int(value)


def _name_map(n_layers: int) -> dict[str, str]:
    """GGUF tensor name -> Qwen2ForCausalLM name."""
    out = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    per_layer = {
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight",
        "attn_q.bias": "self_attn.q_proj.bias",
        "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias",
        "attn_output.weight": "self_attn.o_proj.weight",
        "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight",
        "ffn_down.weight": "mlp.down_proj.weight",
    }
    for i in range(n_layers):
        for src, dst in per_layer.items():
            out[f"blk.{i}.{src}"] = f"model.layers.{i}.{dst}"
    return out


def _open_reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise CheckpointError("reading GGUF files needs the gguf package: pip install gguf") from exc
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if magic != b"GGUF":
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        return GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises ValueError/IndexError/... on truncated or inconsistent files
        raise CheckpointError(f"{path} is not a readable GGUF file (truncated or corrupt?): {exc}") from exc


def _build_tokenizer(reader, path: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise CheckpointError(
            f"{path.name}: tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = _field(reader, "tokenizer.ggml.merges") or []
    types = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens or [])
    if not tokens:
        raise CheckpointError(f"{path.name} holds no tokenizer vocabulary (tokenizer.ggml.tokens)")
    if len(types) != len(tokens):
        raise CheckpointError(f"{path.name}: {len(types)} token types for {len(tokens)} tokens")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise CheckpointError(f"{path.name}: token {i} is not a string")
        vocab.setdefault(t, i)
    pairs = []
    for m in merges:
        a, sep, b = str(m).partition(" ")
        if not sep or a not in vocab or b not in vocab or (a + b) not in vocab:
            raise CheckpointError(f"{path.name}: merge {m!r} does not combine two tokens of the vocabulary")
        pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(_regex(_QWEN2_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in ("smollm", "starcoder", "refact", "codeshell", "falcon3"):
        # these families split digits one by one, then apply GPT-2's byte-level regex
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        if pre not in ("gpt2", "default", "gpt-2"):
            log.warning(
                "%s: pre-tokenizer %r is unknown here; using GPT-2's byte-level split", path.name, pre
            )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # control / user-defined tokens (types 3 and 4) are added tokens, so text never merges into them
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, k in zip(tokens, types, strict=True)
        if k in (3, 4)
    ]
    if special:
        tok.add_special_tokens(special)
    added_mask = tok.token_to_id(MASK) is None
    if added_mask:
        tok.add_special_tokens([AddedToken(MASK, special=True, normalized=False)])
    return tok, added_mask


def _regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def read_gguf(path: str | Path) -> GGUFImport:
    """Parse and check ``path`` (nothing is dequantized). Raises :class:`CheckpointError` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no GGUF file at {path}")
    reader = _open_reader(path)
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{path.name}: architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    hidden = _int_field(reader, f"{arch}.embedding_length")
    n_layers = _int_field(reader, f"{arch}.block_count", hi=_MAX_LAYERS)
    n_heads = _int_field(reader, f"{arch}.attention.head_count", hi=4096)
    n_kv = _int_field(reader, f"{arch}.attention.head_count_kv", n_heads, hi=4096)
    ffn = _int_field(reader, f"{arch}.feed_forward_length")
    ctx = _int_field(reader, f"{arch}.context_length", 4096, hi=1 << 24)
    if hidden % n_heads:
        raise CheckpointError(
            f"{path.name}: embedding_length {hidden} is not a multiple of head_count {n_heads}"
        )
    head_dim = _int_field(reader, f"{arch}.attention.key_length", hidden // n_heads, hi=4096)
    rope_dim = _int_field(reader, f"{arch}.rope.dimension_count", head_dim, hi=4096)
    if rope_dim != head_dim:
        raise CheckpointError(
            f"{path.name}: partial rotary embeddings ({rope_dim} of {head_dim}) are not supported"
        )
    if _field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        raise CheckpointError(f"{path.name}: RoPE scaling is not supported")
    theta = float(_field(reader, f"{arch}.rope.freq_base", 10000.0))
    eps = float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6))
    if not (np.isfinite(theta) and theta > 0 and np.isfinite(eps) and 0 < eps < 1):
        raise CheckpointError(f"{path.name}: rope.freq_base {theta} or rms epsilon {eps} is out of range")

    tok, added_mask = _build_tokenizer(reader, path)
    n_tokens = len(_field(reader, "tokenizer.ggml.tokens"))
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise CheckpointError(f"{path.name} has no token_embd.weight")
    src_vocab = int(embd.shape[-1])
    if src_vocab < n_tokens or src_vocab > 1 << 22:
        raise CheckpointError(f"{path.name}: embedding rows {src_vocab} do not cover the {n_tokens} tokens")
    vocab = src_vocab + (1 if added_mask else 0)
    mask_id = tok.token_to_id(MASK)
    eos = tok.token_to_id(EOS)
    if eos is None:
        eos = _int_field(reader, "tokenizer.ggml.eos_token_id", lo=0, hi=n_tokens - 1)
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    cfg = ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        max_position_embeddings=ctx,
        rms_norm_eps=eps,
        rope_theta=theta,
        tie_word_embeddings=tied,
        attention_bias=True,
        mask_token_id=mask_id,
        pad_token_id=eos,
        eos_token_id=eos,
        bos_token_id=eos,
        torch_dtype="bfloat16",
    )
    tensors = _check_tensors(reader, path, cfg, src_vocab, n_layers)
    meta = {
        k: _field(reader, k)
        for k in ("general.name", "general.license", "general.organization", "general.basename")
        if k in reader.fields
    }
    return GGUFImport(path, arch, cfg, tok, tensors, added_mask, src_vocab, meta)


def _check_tensors(
    reader, path: Path, cfg: ModelConfig, src_vocab: int, n_layers: int
) -> dict[str, GGUFTensor]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    names = _name_map(n_layers)
    h, hd = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    expected = {
        "model.embed_tokens.weight": (src_vocab, h),
        "model.norm.weight": (h,),
    }
    if not cfg.tie_word_embeddings:
        expected["lm_head.weight"] = (src_vocab, h)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        expected.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (cfg.intermediate_size, h),
                p + "mlp.up_proj.weight": (cfg.intermediate_size, h),
                p + "mlp.down_proj.weight": (h, cfg.intermediate_size),
            }
        )
    optional = {
        f"model.layers.{i}.self_attn.{x}_proj.bias": (n,)
        for i in range(n_layers)
        for x, n in (("q", q), ("k", kv), ("v", kv))
    }
    size = path.stat().st_size
    out: dict[str, GGUFTensor] = {}
    unknown = []
    for t in reader.tensors:
        ours = names.get(t.name)
        if ours is None:
            unknown.append(t.name)
            continue
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))  # GGUF lists the inner dim first
        want = expected.get(ours, optional.get(ours))
        if shape != want:
            raise CheckpointError(
                f"{path.name}: tensor {t.name} has shape {list(shape)}, the metadata implies {list(want)}"
            )
        try:
            qtype = GGMLQuantizationType(int(t.tensor_type))
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{path.name}: tensor {t.name} has an unknown type {t.tensor_type}"
            ) from exc
        n = int(np.prod(shape))
        if shape[-1] % block or t.n_bytes != n // block * type_size:
            raise CheckpointError(
                f"{path.name}: tensor {t.name} has {t.n_bytes} bytes, its shape needs {n // block * type_size}"
            )
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise CheckpointError(f"{path.name} is truncated: tensor {t.name} ends past the end of the file")
        out[ours] = GGUFTensor(t.name, shape, int(qtype), t.data)
    if unknown:
        raise CheckpointError(
            f"{path.name}: tensors this importer does not know ({', '.join(unknown[:3])}"
            + (f" +{len(unknown) - 3} more" if len(unknown) > 3 else "")
            + "): not a plain Llama/Qwen2 model"
        )
    missing = [k for k in expected if k not in out]
    if missing:
        raise CheckpointError(f"{path.name} lacks tensors: {', '.join(missing[:3])}")
    biases = [k for k in optional if k in out]
    if biases and len(biases) != len(optional):
        raise CheckpointError(f"{path.name} has q/k/v biases on some layers only")
    return out


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, rows (hd/2, 2) interleaved back to (2, hd/2) halves."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(t: GGUFTensor) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    try:
        if t.qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            arr = np.asarray(t.data, dtype=np.float32)
        else:
            arr = dequantize(np.asarray(t.data), GGMLQuantizationType(t.qtype))
    except Exception as exc:
        raise CheckpointError(f"cannot dequantize {t.name}: {exc}") from exc
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(t.shape)


def gguf_state_dict(imp: GGUFImport, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our state dict (Qwen2 names) from a checked import: dequantized, un-permuted, mask row added."""
    cfg = imp.config
    state: dict[str, torch.Tensor] = {}
    for name, t in imp.tensors.items():
        arr = _dequantize(t)
        if imp.architecture == "llama" and name.endswith("q_proj.weight"):
            arr = unpermute_qk(arr, cfg.num_attention_heads)
        elif imp.architecture == "llama" and name.endswith("k_proj.weight"):
            arr = unpermute_qk(arr, cfg.num_key_value_heads)
        state[name] = torch.from_numpy(np.array(arr))  # writable copy
    for i in range(cfg.num_hidden_layers):
        for x, n in (
            ("q", cfg.num_attention_heads),
            ("k", cfg.num_key_value_heads),
            ("v", cfg.num_key_value_heads),
        ):
            state.setdefault(f"model.layers.{i}.self_attn.{x}_proj.bias", torch.zeros(n * cfg.head_dim))
    if imp.added_mask:
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key in state:
                w = state[key]
                state[key] = torch.cat([w, w.mean(0, keepdim=True)], dim=0)
    return {k: v.to(dtype).contiguous() for k, v in state.items()}


def convert_gguf(path: str | Path, out: str | Path) -> Path:
    """Write ``path`` as a checkpoint folder ``out`` (config.json, model.safetensors, tokenizer files)."""
    from safetensors.torch import save_file

    imp = read_gguf(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = gguf_state_dict(imp, torch.bfloat16)
    if imp.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    imp.tokenizer.save(str(out / "tokenizer.json"))
    cfg = imp.config.to_dict()
    cfg["source"] = {"gguf": Path(path).name, "architecture": imp.architecture, **imp.metadata}
    (out / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": cfg["eos_token_id"], "pad_token_id": cfg["pad_token_id"]}, indent=2),
        encoding="utf-8",
    )
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "eos_token": EOS,
                "pad_token": EOS,
                "mask_token": MASK,
                "model_max_length": cfg["max_position_embeddings"],
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    log.info("converted %s (%s) into %s", Path(path).name, imp.architecture, out)
    return out
