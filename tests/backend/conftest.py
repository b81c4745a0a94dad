"""Backend tests: a real uvicorn server on a random loopback port, in a thread of the test process, serving the
bundled tiny model; the language-server helpers of tests/server for the tests that drive language servers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))  # lsp_helpers


@pytest.fixture(scope="session")
def lm():
    from diffucoder_lsp.model.loading import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def backend(lm):
    from backend_helpers import running_backend

    with running_backend(lm) as served:
        yield served
