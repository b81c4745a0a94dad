"""``diffucoder fill`` decodes as the language server does by default (context cache, several tokens per step,
blocks); ``--decoding plain`` is the earlier default, ``--exact`` still the reference decoder; ``--json`` gives
each hole a confidence score."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from diffucoder_lsp.cli import main
from diffucoder_lsp.engine import cache as cache_module
from diffucoder_lsp.engine.confidence import CALIBRATION_FILE, DEFAULT_STATISTIC, STATISTICS
from diffucoder_lsp.engine.sampler import reference_schedule
from diffucoder_lsp.server.settings import Settings

M = "<|mask|>"


@pytest.fixture
def cached_denoisers(monkeypatch):
    """Every context-cached denoiser the command makes."""
    made = []

    class Recording(cache_module.CachedContextDenoiser):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(cache_module, "CachedContextDenoiser", Recording)
    return made


def fill_json(capsys, src, *extra) -> dict:
    rc = main(["fill", str(src), "--json", *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "a.py"
    path.write_text(f"def f(x):\n    return {M}\n\nprint(f(1))\n")
    return path


def test_the_default_is_the_servers_fast_decoding(tiny_ckpt, src, capsys, cached_denoisers):
    server = Settings()
    assert server.context_cache and server.tokens_per_step == 1 and server.block_size == 1
    record = fill_json(capsys, src, "--model", str(tiny_ckpt), "--length", "12")
    assert len(cached_denoisers) == 1  # the context cache
    # one token a step; a pass for each, but for the steps that guesses from the file answered (speculative
    # steps, engine/cache.py)
    assert record["steps"] == 12 and record["forward_passes"] == 12 - cached_denoisers[0].speculated
    assert record["holes"][0]["reveal_step"] == list(range(12))  # blocks of 1: left to right
    # the pace still follows --tokens-per-step: 3 a step (the one-position block widens to 32), fewer forward
    # passes than tokens
    record = fill_json(capsys, src, "--model", str(tiny_ckpt), "--length", "12", "--tokens-per-step", "3")
    assert record["steps"] == 4 and record["forward_passes"] == 4
    # and so do the blocks: --block-size 32 decodes a 40-token hole as 32 + 8 tokens
    record = fill_json(capsys, src, "--model", str(tiny_ckpt), "--length", "40", "--block-size", "32")
    assert record["steps"] == 40
    steps = record["holes"][0]["reveal_step"]
    assert max(steps[:32]) < min(steps[32:])


def test_plain_is_the_earlier_default_and_flags_override_a_mode(tiny_ckpt, src, capsys, cached_denoisers):
    record = fill_json(capsys, src, "--model", str(tiny_ckpt), "--length", "12", "--decoding", "plain")
    assert (record["steps"], record["forward_passes"], len(cached_denoisers)) == (12, 12, 0)
    record = fill_json(capsys, src, "--model", str(tiny_ckpt), "--length", "12", "--no-cache")
    assert (record["steps"], len(cached_denoisers)) == (12, 0)  # fast, without the cache
    record = fill_json(capsys, src, "--model", str(tiny_ckpt), "--length", "12", "--tokens-per-step", "4")
    assert (record["steps"], len(cached_denoisers)) == (3, 1)
    record = fill_json(
        capsys, src, "--model", str(tiny_ckpt), "--length", "12", "--decoding", "plain", "--cache"
    )
    assert (record["steps"], len(cached_denoisers)) == (12, 2)  # the earlier --cache


def test_exact_is_still_the_reference_decoder(tiny_ckpt, tmp_path, capsys, cached_denoisers):
    path = tmp_path / "two.py"
    path.write_text(f"a = {M}\nb = {M}\n")
    for extra, steps in (([], 10), (["--steps", "4"], 4)):
        for flag in (["--exact"], ["--decoding", "exact"]):
            record = fill_json(capsys, path, "--model", str(tiny_ckpt), "--length", "5", *flag, *extra)
            assert record["steps"] == record["forward_passes"] == steps and not cached_denoisers
            revealed = Counter(s for h in record["holes"] for s in h["reveal_step"])
            assert [revealed[i] for i in range(steps)] == reference_schedule(10, steps)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--exact", "--decoding", "fast"], "--exact"),
        (["--decoding", "exact", "--cache"], "--exact"),
        (["--confidence-statistic", "median"], "confidence-statistic"),
    ],
)
def test_conflicting_decoding_flags_exit_2(tiny_ckpt, src, capsys, extra, needle):
    assert main(["fill", str(src), "--model", str(tiny_ckpt), *extra]) == 2
    assert needle in capsys.readouterr().err


def test_json_reports_each_holes_confidence(tiny_ckpt, tmp_path, capsys):
    path = tmp_path / "two.py"
    path.write_text(f"a = {M}\nb = {M}\n")
    record = fill_json(capsys, path, "--model", str(tiny_ckpt), "--length", "6")
    assert record["confidence_statistic"] == DEFAULT_STATISTIC
    for hole in record["holes"]:
        assert set(hole) >= {"text", "token_ids", "reveal_step", "confidence", "confidence_score"}
        assert 0.0 <= hole["confidence_score"] <= 1.0
    other = fill_json(
        capsys, path, "--model", str(tiny_ckpt), "--length", "6", "--confidence-statistic", "all_mean"
    )
    assert other["confidence_statistic"] == "all_mean"
    assert [h["token_ids"] for h in other["holes"]] == [h["token_ids"] for h in record["holes"]]


def test_json_uses_the_models_calibrated_statistic(tiny_ckpt, src, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_ckpt, model)
    (model / CALIBRATION_FILE).write_text(json.dumps({"statistic": "all_geomean", "min_confidence": 0.5}))
    assert "all_geomean" in STATISTICS
    record = fill_json(capsys, src, "--model", str(model), "--length", "4")
    assert record["confidence_statistic"] == "all_geomean"
