"""Language-server tests: pytest-lsp specification warnings are errors here; a tiny-model options fixture."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/server" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("error::pytest_lsp.LspSpecificationWarning"))


@pytest.fixture(scope="session")
def tiny_options(tiny_ckpt) -> dict[str, Any]:
    """initializationOptions for a fast server on the tiny checkpoint."""
    return {"model": str(tiny_ckpt), "device": "cpu", "debounceMs": 0}
