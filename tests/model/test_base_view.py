"""The base inside an adapted model (model/base_view.py): its passes equal the base model's, and everything is
put back afterwards."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffucoder_lsp.model.adaptation import (
    BASE_FILES,
    MANIFEST,
    WEIGHTS,
    build_adapted_folder,
    make_adaptation,
    state_fingerprint,
    write_adaptation,
)
from diffucoder_lsp.model.base_view import adaptation_folder, base_view
from diffucoder_lsp.model.loading import load_model


@pytest.fixture(scope="module")
def adapted(tiny_ckpt_fp32, tmp_path_factory):
    """(base folder, merged folder with its adaptation beside it): every matrix and some vectors changed."""
    root = tmp_path_factory.mktemp("adapted")
    base_dir = root / "base"
    base_dir.mkdir()
    state = {}
    for f in sorted(tiny_ckpt_fp32.glob("*.safetensors")):
        state.update(load_file(str(f)))
    save_file(state, str(base_dir / "model.safetensors"))
    cfg = json.loads((tiny_ckpt_fp32 / "config.json").read_text())
    (base_dir / "config.json").write_text(json.dumps(cfg))
    for name in BASE_FILES:
        if (tiny_ckpt_fp32 / name).is_file():
            shutil.copy(tiny_ckpt_fp32 / name, base_dir / name)
    g = torch.Generator().manual_seed(7)
    tuned = {k: v.float().clone() for k, v in state.items()}
    for name, w in tuned.items():
        if w.ndim == 2 and "embed" not in name and "lm_head" not in name:
            w += 0.2 * torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)
        elif w.ndim == 1:
            w += 0.1 * torch.randn(w.shape, generator=g)
    mask_id = cfg["mask_token_id"]
    tuned["model.embed_tokens.weight"][mask_id] += 1.0
    tensors, _ = make_adaptation(state, tuned, rank=2, exact_rows={"model.embed_tokens.weight": [mask_id]})
    manifest = {"config": cfg, "base": {"fingerprint": state_fingerprint(state)}}
    ad = write_adaptation(root / "ad", tensors, manifest)
    merged = build_adapted_folder(ad, base_dir, root / "merged")
    for name in (MANIFEST, WEIGHTS):
        shutil.copy(ad / name, merged / name)
    return base_dir, merged


def _logits(lm, ids, causal=True):
    with torch.no_grad():
        return lm.model.lm_head(lm.model.hidden_states(ids, causal=causal))


def test_the_view_computes_as_the_base_and_restores_the_adapted_model(adapted):
    base_dir, merged = adapted
    base = load_model(base_dir, device="cpu", dtype="fp32")
    lm = load_model(merged, device="cpu", dtype="fp32")
    ids = torch.tensor([lm.tokenizer.encode("def add(a, b):\n    return a + b\n\nx = add(1, 2)\n")])
    want, before = _logits(base, ids), _logits(lm, ids)
    assert (want - before).abs().max() > 1e-2  # the adaptation changed the model
    view = base_view(lm)
    assert view is not None and view.layers == 7 * lm.config.num_hidden_layers
    with view.active():
        got = _logits(lm, ids)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.equal(_logits(lm, ids), before)  # put back exactly
    assert base_view(lm) is view  # built once


def test_a_plain_checkpoint_has_no_view_and_a_broken_adaptation_gives_none(adapted, tiny_ckpt_fp32, tmp_path):
    assert adaptation_folder(tiny_ckpt_fp32) is None
    assert base_view(load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32")) is None
    _, merged = adapted
    broken = tmp_path / "broken"
    shutil.copytree(merged, broken)
    tensors = load_file(str(broken / WEIGHTS))
    key = next(k for k in tensors if k.endswith(".delta_a"))
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1, dtype=tensors[key].dtype)
    body = json.loads((broken / MANIFEST).read_text())
    write_adaptation(broken, tensors, {k: v for k, v in body.items() if k not in ("format", "version")})
    lm = load_model(broken, device="cpu", dtype="fp32")
    before = _logits(lm, torch.tensor([[1, 2, 3]]))
    assert base_view(lm) is None  # a factor that does not fit: logged, no view, the model untouched
    assert torch.equal(_logits(lm, torch.tensor([[1, 2, 3]])), before)
