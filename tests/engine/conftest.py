"""The tiny model the engine tests decode with: loaded once per test module (fp32, CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def lm(tiny_ckpt_fp32):
    from diffucoder_lsp.model.loading import load_model

    return load_model(str(tiny_ckpt_fp32), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def tok(lm):
    return lm.tokenizer
