"""``diffucoder doctor`` and ``diffucoder make-tiny`` through the real CLI entry point."""

from __future__ import annotations

import json
import platform

import pytest
import torch
from safetensors import safe_open

from diffucoder_lsp.cli import EXIT_BAD_INPUT, main
from diffucoder_lsp.model.loading import auto_dtype, cpu_bf16_support, load_model, resolve_device


def _doctor_json(capsys, *extra: str) -> dict:
    assert main(["doctor", "--json", *extra]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


@pytest.mark.slow  # first bitsandbytes import + quantization probe (~3 s)
def test_doctor_json_reports_this_machine(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUCODER_CACHE", str(tmp_path / "cache"))
    report = _doctor_json(capsys)
    assert report["python"] == platform.python_version()
    assert report["torch"] == torch.__version__
    assert report["cuda"]["available"] == torch.cuda.is_available()
    assert len(report["cuda"]["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert isinstance(report["mps"]["available"], bool)
    assert report["cpu"]["threads"] == torch.get_num_threads()
    assert report["cpu"]["bf16_native"] == cpu_bf16_support()[0]
    device = resolve_device("auto")
    dtype, why = auto_dtype(device)
    assert report["default_device"] == str(device)
    assert report["default_dtype"] == str(dtype).removeprefix("torch.")
    assert report["default_dtype_reason"] == why
    for mode in ("8bit", "4bit"):
        assert isinstance(report["quant"][mode]["ok"], bool) and report["quant"][mode]["reason"]
    model = report["default_model"]
    assert model["kind"] in ("adapted", "tiny", "tiny-fallback")
    if model["kind"] == "adapted":
        assert model["exists"] is False and "first use" in model["note"]  # nothing built in a fresh cache
        assert model["path"].startswith(str(tmp_path / "cache" / "models"))
    if model["kind"] == "tiny-fallback":
        assert model["path"] == str(tmp_path / "cache" / "tiny-default")
        assert model["exists"] is False
        assert not (tmp_path / "cache").exists()  # the doctor reports; it never creates the fallback
    assert report["cache_dir"] == str(tmp_path / "cache")


def test_doctor_quant_fields_follow_bitsandbytes(capsys):
    report = _doctor_json(capsys)
    try:
        import bitsandbytes
    except ImportError:
        assert report["quant"]["bitsandbytes"] is None
        assert report["quant"]["8bit"]["ok"] is False and "pip install" in report["quant"]["8bit"]["reason"]
        return
    assert report["quant"]["bitsandbytes"] == bitsandbytes.__version__
    if report["default_device"] == "cpu":  # bitsandbytes 0.50 runs both modes on CPU
        assert report["quant"]["8bit"]["ok"] and report["quant"]["4bit"]["ok"]


def test_doctor_text_and_no_probe(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    for word in ("torch", "CUDA", "bitsandbytes", "8bit", "4bit", "dtype", "model"):
        assert word in text
    report = _doctor_json(capsys, "--no-quant-probe")
    assert report["quant"]["8bit"]["ok"] is None and "skipped" in report["quant"]["4bit"]["reason"]


def test_make_tiny_writes_a_loadable_checkpoint(capsys, tmp_path):
    out = tmp_path / "tiny"
    assert main(["make-tiny", str(out), "--shards", "3", "--dtype", "fp32", "--seed", "7"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert len(list(out.glob("model-*-of-00003.safetensors"))) == 3
    with safe_open(str(next(out.glob("model-00001-*.safetensors"))), framework="pt") as fh:
        assert fh.get_tensor(next(iter(fh.keys()))).dtype == torch.float32
    lm = load_model(str(out), device="cpu", dtype="fp32")
    assert lm.config.hidden_size == 64
    # Same seed, same weights; another seed, other weights.
    assert (
        main(["make-tiny", str(tmp_path / "again"), "--shards", "1", "--seed", "7", "--dtype", "fp32"]) == 0
    )
    assert (
        main(["make-tiny", str(tmp_path / "other"), "--shards", "1", "--seed", "8", "--dtype", "fp32"]) == 0
    )
    capsys.readouterr()
    w = lm.model.model.embed_tokens.weight
    again = load_model(str(tmp_path / "again"), device="cpu", dtype="fp32").model.model.embed_tokens.weight
    other = load_model(str(tmp_path / "other"), device="cpu", dtype="fp32").model.model.embed_tokens.weight
    assert torch.equal(w, again) and not torch.equal(w, other)


def test_make_tiny_size_overrides(capsys, tmp_path):
    out = tmp_path / "wide"
    assert main(["make-tiny", str(out), "--hidden-size", "96", "--layers", "3", "--shards", "1"]) == 0
    lm = load_model(str(out), device="cpu")
    assert (lm.config.hidden_size, lm.config.num_hidden_layers) == (96, 3)
    assert main(["make-tiny", str(tmp_path / "bad"), "--hidden-size", "60"]) == EXIT_BAD_INPUT
    assert "multiple of 8" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--shards", "0"], ["--dtype", "int4"]])
def test_make_tiny_rejects_bad_options(capsys, tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        main(["make-tiny", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert not (tmp_path / "x").exists()


def test_make_tiny_refuses_a_non_empty_folder(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["make-tiny", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_make_tiny_preset_is_the_real_7b_shape(capsys, tmp_path, monkeypatch):
    """The preset carries the facts doc's 7B shape; building it is left to the GPU check (15 GB), so here the
    writer gets the preset's shape with the width shrunk, and the options are checked."""
    from diffucoder_lsp.commands import make_tiny

    shape = make_tiny.PRESETS["dream-7b"]
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["num_attention_heads"]) == (3584, 28, 28)
    assert (shape["num_key_value_heads"], shape["intermediate_size"], shape["vocab_size"]) == (
        4,
        18944,
        152064,
    )
    assert shape["rope_theta"] == 1e6 and shape["hidden_size"] // shape["num_attention_heads"] == 128
    small = dict(shape, hidden_size=56, intermediate_size=64, vocab_size=1000)  # 28 heads of 2, 4 kv heads
    monkeypatch.setitem(make_tiny.PRESETS, "dream-7b", small)
    out = tmp_path / "shape"
    assert main(["make-tiny", str(out), "--preset", "dream-7b", "--layers", "2", "--shards", "1"]) == 0
    cfg = load_model(str(out), device="cpu").config
    assert (cfg.vocab_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers) == (
        1000,
        28,
        4,
        2,
    )
    assert cfg.rope_theta == 1e6 and cfg.max_position_embeddings == 32768
    bad = ["make-tiny", str(tmp_path / "bad"), "--preset", "dream-7b"]
    assert main([*bad, "--hidden-size", "64"]) == EXIT_BAD_INPUT
    if not torch.cuda.is_available():
        assert main([*bad, "--device", "cuda"]) == EXIT_BAD_INPUT
    assert main([*bad, "--device", "nonsense"]) == EXIT_BAD_INPUT
