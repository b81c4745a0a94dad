"""A hostile or broken checkpoint folder is one clear CheckpointError, fast, never a hang or an exhausted machine.

The cases are the ones measured against the loader (issue: hardening): config.json pointing at /dev/zero or a
FIFO, a FIFO as the weights file or as a stray *.safetensors, a million layers, negative, zero, string and float
sizes, a negative epsilon, JSON nested 100,000 deep, and a model larger than the free memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from diffucoder_lsp.errors import CheckpointError
from diffucoder_lsp.model import loading
from diffucoder_lsp.model.loading import load_model


@pytest.fixture
def folder(tiny_ckpt, tmp_path):
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, out)
    return out


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _refused(folder, match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=match):
        load_model(folder, device="cpu")
    assert time.perf_counter() - start < 30  # the measured failures took minutes or never returned


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"num_hidden_layers": 1_000_000}, "num_hidden_layers must be between"),
        ({"hidden_size": -256}, "hidden_size must be between"),
        ({"num_key_value_heads": 0}, "num_key_value_heads must be between"),
        ({"rms_norm_eps": -1}, "rms_norm_eps must be in"),
        ({"rms_norm_eps": "tiny"}, "rms_norm_eps must be a finite number"),
        ({"hidden_size": "64"}, "hidden_size must be an integer"),
        ({"hidden_size": 64.0}, "hidden_size must be an integer"),
        ({"num_attention_heads": True}, "num_attention_heads must be an integer"),
        ({"rope_theta": float("inf")}, "rope_theta must be a finite number"),
        ({"tie_word_embeddings": "no"}, "tie_word_embeddings must be true or false"),
        ({"vocab_size": 10**30}, "vocab_size must be between"),
    ],
)
def test_bad_config_fields_are_refused_before_any_module_is_built(folder, changes, match):
    _edit_config(folder, **changes)
    _refused(folder, match)


def test_deeply_nested_config_is_refused(folder):
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(folder, "nested too deeply")


def test_config_pointing_at_a_device_is_refused(folder):
    (folder / "config.json").unlink()
    os.symlink("/dev/zero", folder / "config.json")
    _refused(folder, "not a regular file")


def test_a_huge_config_is_refused_by_size(folder):
    with open(folder / "config.json", "ab") as fh:
        fh.truncate(2 << 20)
    _refused(folder, "more than a config.json may be")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_fifo_never_blocks_the_loader(folder, name):
    if name == "model.safetensors":
        for f in folder.glob("*.safetensors*"):
            f.unlink()
    else:
        (folder / name).unlink()
    os.mkfifo(folder / name)
    _refused(folder, "not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_stray_fifo_is_not_picked_up_as_weights(folder):
    for f in folder.glob("*.safetensors*"):
        f.unlink()
    os.mkfifo(folder / "weights.safetensors")
    _refused(folder, "no weights")


def test_a_model_larger_than_free_memory_is_refused_up_front(folder, monkeypatch):
    monkeypatch.setattr(loading, "available_memory_bytes", lambda: 1000)
    _refused(folder, r"needs .* GB of memory .* but .* GB is free")


def test_the_cli_exits_2_with_one_line(folder):
    _edit_config(folder, num_hidden_layers=1_000_000)
    done = subprocess.run(
        [sys.executable, "-m", "diffucoder_lsp.cli", "fill", "-", "--model", str(folder)],
        input="x = <|mask|>\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "num_hidden_layers" in lines[0]
