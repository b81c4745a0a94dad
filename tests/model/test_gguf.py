"""GGUF import: tiny files written with the gguf package's writer, checked against a reference Llama/Qwen2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from diffucoder_lsp.errors import CheckpointError  # noqa: E402
from diffucoder_lsp.model import load_model  # noqa: E402
from diffucoder_lsp.model.gguf import read_gguf, unpermute_qk  # noqa: E402
from diffucoder_lsp.model.loading import resolve_checkpoint  # noqa: E402

HIDDEN, LAYERS, HEADS, KV, FFN = 32, 2, 4, 2, 48


def _vocab():
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|endoftext|>", "<|im_start|>"] + alphabet
    merges = ["Ġ a", "r e", "re t", "ret u"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    types = [3, 3] + [1] * (len(tokens) - 2)
    return tokens, merges, types


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows of Llama models."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_model(arch: str, vocab: int, tied: bool):
    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
    )
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(attention_bias=False, **common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def write_gguf(path, model, arch: str, qtype=None, truncate: int = 0, lie: dict | None = None):
    tokens, merges, types = _vocab()
    w = gguf.GGUFWriter(str(path), arch)
    meta = {
        "block_count": LAYERS,
        "embedding_length": HIDDEN,
        "feed_forward_length": FFN,
        "head_count": HEADS,
        "head_count_kv": KV,
        **(lie or {}),
    }
    w.add_block_count(meta["block_count"])
    w.add_context_length(256)
    w.add_embedding_length(meta["embedding_length"])
    w.add_feed_forward_length(meta["feed_forward_length"])
    w.add_head_count(meta["head_count"])
    w.add_head_count_kv(meta["head_count_kv"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for i in range(LAYERS):
        for k, v in per.items():
            names[f"model.layers.{i}.{k}"] = f"blk.{i}.{v}"
    tied = model.config.tie_word_embeddings
    for key, t in model.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue
        arr = t.detach().float().numpy().copy()
        if arch == "llama" and key.endswith("q_proj.weight"):
            arr = permute(arr, HEADS)
        elif arch == "llama" and key.endswith("k_proj.weight"):
            arr = permute(arr, KV)
        if qtype is not None and arr.ndim == 2 and arr.shape[-1] % 32 == 0:
            w.add_tensor(names[key], gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(names[key], arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[:-truncate])
    return path


@pytest.mark.parametrize("arch,tied", [("llama", True), ("llama", False), ("qwen2", False)])
def test_causal_logits_match_reference(tmp_path, monkeypatch, arch, tied):
    monkeypatch.setenv("DIFFUCODER_CACHE", str(tmp_path / "cache"))
    vocab = len(_vocab()[0])
    ref = _hf_model(arch, vocab, tied)
    path = write_gguf(tmp_path / "m.gguf", ref, arch)
    lm = load_model(str(path), device="cpu", dtype="fp32")
    assert lm.config.vocab_size == vocab + 1 and lm.config.mask_token_id == vocab
    ids = torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
        got = lm.model.lm_head(lm.model.hidden_states(ids, causal=True))
    # bf16 storage of the converted weights: compare at bf16 precision
    assert got.shape[-1] == vocab + 1
    torch.testing.assert_close(got[..., :vocab], want, atol=0.15, rtol=0.05)
    assert (got[..., :vocab].argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_mask_row_added_without_disturbing_other_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUCODER_CACHE", str(tmp_path / "cache"))
    vocab = len(_vocab()[0])
    ref = _hf_model("llama", vocab, True)
    folder = resolve_checkpoint(str(write_gguf(tmp_path / "m.gguf", ref, "llama")))
    lm = load_model(folder, device="cpu", dtype="fp32")
    emb = lm.model.model.embed_tokens.weight
    src = ref.model.embed_tokens.weight.detach().to(torch.bfloat16).float()
    torch.testing.assert_close(emb[:vocab], src)
    torch.testing.assert_close(emb[vocab], src.mean(0).to(torch.bfloat16).float(), atol=1e-2, rtol=0)
    assert lm.tokenizer.mask_id == vocab and lm.tokenizer.token_text(vocab) == "<|mask|>"
    # the rebuilt tokenizer applies the file's merges and round-trips text
    text = "def f():\n    return a\n"
    assert lm.tokenizer.decode(lm.tokenizer.encode(text)) == text
    assert "ret" + "u" in [lm.tokenizer.token_text(i) for i in lm.tokenizer.encode(" return")]
    # a second resolve reuses the converted folder
    assert resolve_checkpoint(str(tmp_path / "m.gguf")) == folder


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(8 * 2 * 3, dtype=np.float32).reshape(16, 3)
    assert np.array_equal(unpermute_qk(permute(w, 2), 2), w)
    assert not np.array_equal(permute(w, 2), w)


def test_quantized_file_imports_close_to_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUCODER_CACHE", str(tmp_path / "cache"))
    vocab = len(_vocab()[0])
    ref = _hf_model("llama", vocab, True)
    path = write_gguf(tmp_path / "q.gguf", ref, "llama", qtype=gguf.GGMLQuantizationType.Q8_0)
    lm = load_model(str(path), device="cpu", dtype="fp32")
    ids = torch.arange(20)[None] % vocab
    with torch.no_grad():
        want = ref(ids).logits
        got = lm.model.lm_head(lm.model.hidden_states(ids, causal=True))[..., :vocab]
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8


def test_truncated_file_is_a_clear_error(tmp_path):
    ref = _hf_model("llama", len(_vocab()[0]), True)
    path = write_gguf(tmp_path / "t.gguf", ref, "llama", truncate=100)
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        read_gguf(path)


def test_lying_header_is_refused_before_allocation(tmp_path):
    ref = _hf_model("llama", len(_vocab()[0]), True)
    path = write_gguf(tmp_path / "l.gguf", ref, "llama", lie={"embedding_length": 1 << 30})
    with pytest.raises(CheckpointError, match="embedding_length"):
        read_gguf(path)
    path = write_gguf(tmp_path / "l2.gguf", ref, "llama", lie={"feed_forward_length": 64})
    with pytest.raises(CheckpointError, match="shape"):
        read_gguf(path)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(CheckpointError, match="not a GGUF"):
        read_gguf(bad)
