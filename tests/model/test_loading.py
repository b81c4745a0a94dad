"""Checkpoint loading: layouts, strictness, safety (no pickle, no remote code), Hub cache, defaults."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffucoder_lsp.errors import BadInputError, CheckpointError
from diffucoder_lsp.model import bundled, devices
from diffucoder_lsp.model.cache import build_folder_atomically
from diffucoder_lsp.model.config import ModelConfig
from diffucoder_lsp.model.loading import (
    load_model,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
)
from diffucoder_lsp.model.network import DreamModel
from diffucoder_lsp.model.tiny import write_tiny_checkpoint


def _saved_state(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


@pytest.fixture
def ckpt(tmp_path):
    """A fresh single-file checkpoint each test may break."""
    return write_tiny_checkpoint(tmp_path / "ckpt", shards=1, seed=1)


def test_sharded_checkpoint_loads_strictly_and_exactly(tiny_ckpt):
    assert (tiny_ckpt / "model.safetensors.index.json").is_file()
    lm = load_model(str(tiny_ckpt), device="cpu", dtype="bf16")
    assert isinstance(lm.model, DreamModel)
    assert lm.path == tiny_ckpt.resolve() and lm.name == str(tiny_ckpt)
    assert lm.device == torch.device("cpu") and lm.dtype == torch.bfloat16 and lm.quant == "none"
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert not any(p.is_meta for p in lm.model.parameters())
    saved = _saved_state(tiny_ckpt)
    loaded = lm.model.state_dict()
    assert set(saved) == set(loaded)
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key
    assert lm.tokenizer.mask_id == lm.config.mask_token_id


def test_single_file_checkpoint_and_dtype_cast(ckpt):
    assert (ckpt / "model.safetensors").is_file() and not (ckpt / "model.safetensors.index.json").exists()
    lm = load_model(ckpt, device="cpu", dtype="fp32")
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    saved = load_file(str(ckpt / "model.safetensors"))
    assert torch.equal(lm.model.lm_head.weight, saved["lm_head.weight"].float())
    with torch.no_grad():
        logits = lm.model(torch.tensor([[1, 2, 3, 4]]))
    assert logits.shape == (1, 4, lm.config.vocab_size) and torch.isfinite(logits).all()


def test_remote_code_is_never_executed(tiny_ckpt):
    remote = tiny_ckpt / "modeling_dream.py"
    assert "raise RuntimeError" in remote.read_text()  # importing it would fail the load
    assert "auto_map" in json.loads((tiny_ckpt / "config.json").read_text())
    load_model(str(tiny_ckpt), device="cpu")
    assert "modeling_dream" not in sys.modules


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_wrong_model_type_is_refused(ckpt):
    _edit_config(ckpt, model_type="llama")
    with pytest.raises(CheckpointError, match="model_type 'llama'"):
        load_model(ckpt, device="cpu")


def test_shape_mismatch_names_the_keys(ckpt):
    _edit_config(ckpt, intermediate_size=256)
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt, device="cpu")
    msg = str(err.value)
    assert "shape mismatch" in msg and "mlp.gate_proj.weight" in msg and "[128, 64]" in msg


def test_missing_shard_is_named(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "sharded", shards=3)
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00003.safetensors .* missing"):
        load_model(folder, device="cpu")


def test_missing_and_unexpected_keys(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    del state["model.layers.1.self_attn.k_proj.bias"]
    state["model.layers.1.extra.weight"] = torch.zeros(2)
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt, device="cpu")
    msg = str(err.value)
    assert "missing keys: model.layers.1.self_attn.k_proj.bias" in msg
    assert "unexpected keys: model.layers.1.extra.weight" in msg


def test_index_pointing_at_wrong_shard(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "sharded", shards=2)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    if index["weight_map"]["lm_head.weight"] == "model-00001-of-00002.safetensors":
        index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="does not hold it"):
        load_model(folder, device="cpu")


def test_pickle_only_folder_is_refused(tmp_path, ckpt):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(ckpt / "config.json", folder)
    shutil.copy(ckpt / "tokenizer.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(CheckpointError) as err:
        load_model(folder, device="cpu")
    msg = str(err.value)
    assert "pickle" in msg and "refused" in msg and "safetensors" in msg and "pytorch_model.bin" in msg


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors(ckpt, damage):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(b"\x00\x01garbage" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(ckpt, device="cpu")


def test_tied_embeddings_without_lm_head(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "tied", shards=1, tie_word_embeddings=True)
    state = load_file(str(folder / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(folder / "model.safetensors"))
    lm = load_model(folder, device="cpu", dtype="fp32")
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight
    assert torch.equal(lm.model.lm_head.weight, state["model.embed_tokens.weight"].float())


def test_hub_id_not_cached_while_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint("apple/DiffuCoder-7B-Instruct")
    msg = str(err.value)
    assert "not in the local cache" in msg and "offline" in msg


def test_hub_id_resolves_from_local_hf_cache_offline(tmp_path, monkeypatch, tiny_ckpt):
    hf_home = tmp_path / "hf"
    repo = hf_home / "hub" / "models--someorg--tiny-dream"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / rev
    shutil.copytree(tiny_ckpt, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert resolve_checkpoint("someorg/tiny-dream") == snapshot
    assert resolve_checkpoint(f"someorg/tiny-dream@{rev}") == snapshot
    lm = load_model("someorg/tiny-dream", device="cpu")
    assert lm.path == snapshot and lm.name == "someorg/tiny-dream"


def test_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "does" / "not" / "exist"))
    afile = tmp_path / "model.safetensors"
    afile.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(str(afile))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path, device="cpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(BadInputError, match="unknown device"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu") or resolve_device("auto").type == "mps"
        with pytest.raises(BadInputError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(BadInputError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_resolve_dtype(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.raises(BadInputError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: (True, "test: native"))
    assert resolve_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: (False, "test: emulated"))
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32


def test_cpu_bf16_support_reads_the_cpu_flags():
    ok, why = devices.cpu_bf16_support()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert ok == any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))
    assert why


def test_tiny_fallback_generates_a_loadable_random_model(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(bundled, "TINY_MODEL_DIR", tmp_path / "no-tiny-model")
    monkeypatch.setattr(bundled, "BUNDLED_ADAPTATION_DIR", tmp_path / "no-adaptation")
    monkeypatch.setattr(bundled, "_warned_fallback", False)
    monkeypatch.setenv("DIFFUCODER_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="diffucoder_lsp.model.bundled"):
        path = bundled.tiny_model_path()
    assert path == tmp_path / "cache" / "tiny-default"
    assert "tiny model is missing" in caplog.text
    assert (path / "config.json").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny-default"]  # no temp dir left behind
    stamp = (path / "config.json").stat().st_mtime_ns
    # without the bundled adaptation, default means tiny
    monkeypatch.delenv("DIFFUCODER_MODEL", raising=False)
    assert resolve_checkpoint(None) == path and resolve_checkpoint("default") == path
    assert resolve_checkpoint("tiny") == path
    assert (path / "config.json").stat().st_mtime_ns == stamp  # generated once, then reused
    lm = load_model(None, device="cpu")
    assert lm.name == "default" and lm.path == path


def test_diffucoder_model_names_the_model_of_commands_without_one(monkeypatch, tiny_ckpt):
    monkeypatch.setenv("DIFFUCODER_MODEL", str(tiny_ckpt))
    assert resolve_checkpoint(None) == tiny_ckpt.resolve()
    assert resolve_checkpoint("tiny") == bundled.TINY_MODEL_DIR  # a named model wins
    monkeypatch.setenv("DIFFUCODER_MODEL", "tiny")
    assert resolve_checkpoint(None) == bundled.TINY_MODEL_DIR


def test_tiny_is_the_built_in_small_model():
    assert resolve_checkpoint("tiny") == bundled.TINY_MODEL_DIR
    assert (bundled.TINY_MODEL_DIR / "config.json").is_file()


def test_fallback_write_tolerates_a_concurrent_winner(tmp_path):
    target = tmp_path / "tiny-default"
    write_tiny_checkpoint(target, shards=1, seed=5)  # another process got there first
    before = (target / "model.safetensors").read_bytes()
    build_folder_atomically(target, lambda folder: write_tiny_checkpoint(folder, shards=1, seed=6))
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-default"]


def test_device_map_on_cpu(tiny_ckpt):
    with pytest.raises(BadInputError, match="needs --device cuda"):
        load_model(str(tiny_ckpt), device="cpu", device_map="auto")
    explicit = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    lm = load_model(str(tiny_ckpt), device="cpu", device_map=explicit)
    assert lm.device == torch.device("cpu")
    with pytest.raises(BadInputError, match="device_map"):
        load_model(str(tiny_ckpt), device="cpu", device_map="balanced")


@pytest.mark.slow  # a fresh interpreter imports torch (~3 s)
def test_cpu_loading_never_imports_accelerate_bitsandbytes_or_dynamo(tiny_ckpt):
    code = (
        "import sys; from diffucoder_lsp.model import load_model; "
        f"load_model({str(tiny_ckpt)!r}, device='cpu'); "
        # torch._dynamo: torch's init of a meta-device embedding would import it (2.5-3.3 s of every load)
        "bad = [m for m in ('accelerate', 'bitsandbytes', 'transformers', 'torch._dynamo') "
        "if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # library code never writes to stdout (the LSP channel)


def test_a_model_built_off_the_meta_device_keeps_torch_init(tiny_ckpt):
    """Skipping the embedding's init applies to the meta device (loading) only: a model built on the CPU, as the
    tests and the trainer's own init expect, starts from torch's N(0, 1) embedding."""
    cfg = ModelConfig.from_file(tiny_ckpt / "config.json")
    w = DreamModel(cfg).model.embed_tokens.weight
    assert w.device.type == "cpu" and w.requires_grad
    assert 0.8 < float(w.std()) < 1.2 and abs(float(w.mean())) < 0.1
    with torch.device("meta"):
        meta = DreamModel(cfg).model.embed_tokens.weight
    assert meta.is_meta and meta.shape == (cfg.vocab_size, cfg.hidden_size)
