"""Suggestion confidence: per-token certainty per algorithm, the statistics' range and monotonicity, the first
line's tokens, and the calibration file a model folder may carry."""

from __future__ import annotations

import json
import math
import random

import pytest

from diffucoder_lsp.engine.confidence import (
    CALIBRATION_FILE,
    DEFAULT_STATISTIC,
    STATISTICS,
    Calibration,
    SuggestionTokens,
    all_statistics,
    read_calibration,
    statistic,
    suggestion_tokens,
    token_certainty,
    write_calibration,
)


def test_token_certainty_is_in_unit_range_and_increasing_for_every_algorithm():
    assert token_certainty(0.0, "entropy") == 1.0  # a certain position
    assert token_certainty(-math.log(4), "entropy") == pytest.approx(0.25)  # four equally likely tokens
    assert token_certainty(0.7, "maskgit_plus") == 0.7 and token_certainty(0.3, "topk_margin") == 0.3
    for alg, lo, hi in (("entropy", -12.0, 0.0), ("maskgit_plus", 0.0, 1.0), ("topk_margin", 0.0, 1.0)):
        grid = [lo + (hi - lo) * i / 50 for i in range(51)]
        values = [token_certainty(c, alg) for c in grid]
        assert all(0.0 <= v <= 1.0 for v in values), alg
        assert values == sorted(values), alg
    assert token_certainty(float("nan"), "maskgit_plus") == 0.0
    assert token_certainty(1.5, "maskgit_plus") == 1.0 and token_certainty(0.2, "entropy") == 1.0


def test_every_statistic_is_ranged_and_never_falls_when_a_token_gets_surer():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        values = [rng.random() for _ in range(n)]
        a = rng.randint(0, n - 1)
        tokens = SuggestionTokens(tuple(values), (a, rng.randint(a + 1, n)))
        before = all_statistics(tokens)
        assert set(before) == set(STATISTICS)
        assert all(0.0 <= v <= 1.0 for v in before.values())
        i = rng.randrange(n)
        values[i] = min(1.0, values[i] + rng.random())
        after = all_statistics(SuggestionTokens(tuple(values), tokens.first_line))
        assert all(after[k] >= before[k] - 1e-12 for k in STATISTICS)


def test_statistics_read_their_span_and_reduce_as_named():
    tokens = SuggestionTokens((0.9, 0.4, 1.0, 0.1), (0, 3))
    assert statistic(tokens, "first_line_min") == 0.4
    assert statistic(tokens, "first_line_mean") == pytest.approx((0.9 + 0.4 + 1.0) / 3)
    assert statistic(tokens, "first_line_geomean") == pytest.approx((0.9 * 0.4 * 1.0) ** (1 / 3))
    assert statistic(tokens, "all_min") == 0.1
    assert statistic(SuggestionTokens((0.5, 0.0)), "all_geomean") == 0.0
    # nothing to read: nothing to be sure of
    assert all(v == 0.0 for v in all_statistics(SuggestionTokens(())).values())
    assert statistic(SuggestionTokens((0.8,), (0, 0)), "first_line_mean") == 0.0
    assert DEFAULT_STATISTIC in STATISTICS
    with pytest.raises(ValueError, match="unknown confidence statistic"):
        statistic(tokens, "median")


class FakeTokenizer:
    """Whole-string tokens: enough to check where the first line's tokens are."""

    PIECES = {1: "\n", 2: "    ", 3: "return", 4: " x", 5: "  \n", 6: "y", 7: "<eos>", 8: "z"}
    stop_ids = frozenset({7})

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids if i not in self.stop_ids)


def test_suggestion_tokens_cut_at_the_stop_token_and_find_the_first_line_with_code():
    ids = [1, 2, 3, 4, 5, 2, 6, 7, 8]
    conf = [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8, -0.9]
    tokens = suggestion_tokens(ids, conf, "entropy", FakeTokenizer())
    assert len(tokens.certainty) == 7  # the stop token and what follows are not shown
    assert tokens.first_line == (2, 4)  # "return", " x": the leading newline and indentation write no code
    assert tokens.certainty[2] == pytest.approx(math.exp(-0.3))
    blank = suggestion_tokens([1, 2, 7], [-0.1, -0.1, -0.1], "entropy", FakeTokenizer())
    assert blank.first_line == (0, 0) and statistic(blank, "first_line_min") == 0.0


def test_tokens_that_only_re_spell_the_lead_are_not_the_suggestion():
    """Token healing: the hole's first tokens spell text before the hole (its lead) and then the suggestion."""
    ids, conf = [2, 3, 4, 1, 6], [0.9, 0.2, 0.5, 0.6, 0.7]
    tokens = suggestion_tokens(ids, conf, "maskgit_plus", FakeTokenizer(), lead="    ")
    assert tokens.certainty == (0.2, 0.5, 0.6, 0.7) and tokens.first_line == (0, 2)
    # a lead the text does not start with is not taken off
    assert suggestion_tokens(ids, conf, "maskgit_plus", FakeTokenizer(), lead="x").first_line == (1, 3)
    # a token spelling the lead and more stays: it writes part of the suggestion
    merged = suggestion_tokens([3, 4], [0.3, 0.4], "maskgit_plus", FakeTokenizer(), lead="ret")
    assert merged.certainty == (0.3, 0.4) and merged.first_line == (0, 2)


def test_first_line_tokens_with_a_real_byte_level_tokenizer(tiny_ckpt):
    from diffucoder_lsp.model.config import ModelConfig
    from diffucoder_lsp.model.tokenizer import CodeTokenizer

    tok = CodeTokenizer.from_dir(tiny_ckpt, ModelConfig.from_file(tiny_ckpt / "config.json"))
    first, rest = "total = add(a, 'é')", "\n    return total\n"
    ids = tok.encode(first + rest) + [tok.eos_id, tok.eos_id]
    tokens = suggestion_tokens(ids, [0.5] * len(ids), "maskgit_plus", tok)
    a, b = tokens.first_line
    assert a == 0 and tok.decode(ids[:b]).rstrip() == first
    assert len(tokens.certainty) == len(ids) - 2


def test_calibration_round_trips_and_a_bad_file_is_ignored(tmp_path, caplog):
    assert read_calibration(tmp_path) is None and read_calibration(None) is None
    cal = Calibration("all_mean", 0.42, 0.6, {"alg": "entropy"}, {"requests": 10})
    path = write_calibration(tmp_path / "model", cal)
    assert path.name == CALIBRATION_FILE
    raw = json.loads(path.read_text())
    assert raw["format"] == 1 and raw["statistic"] == "all_mean" and raw["min_confidence"] == 0.42
    assert read_calibration(tmp_path / "model") == cal and cal.alg == "entropy"
    for bad in ("{not json", '{"statistic": "median", "min_confidence": 0.5}', '{"statistic": "all_min"}'):
        path.write_text(bad)
        assert read_calibration(tmp_path / "model") is None
    path.write_text(json.dumps({"statistic": "all_min", "min_confidence": 1.5}))
    assert read_calibration(tmp_path / "model") is None
    assert "ignoring" in caplog.text


def test_a_ranked_part_round_trips_and_a_bad_one_is_named(tmp_path, caplog):
    ranked = Calibration("first_line_min", 0.106, 0.6, {"rankLines": 8}, {"coverage": 0.53})
    cal = Calibration("first_line_min", 0.14, 0.6, {"alg": "entropy"}, {"requests": 200}, ranked)
    path = write_calibration(tmp_path / "model", cal)
    raw = json.loads(path.read_text())
    assert raw["ranked"]["min_confidence"] == 0.106 and "format" not in raw["ranked"]
    assert read_calibration(tmp_path / "model") == cal
    for bad in (
        {"statistic": "median", "min_confidence": 0.1},
        [1],
        {**raw["ranked"], "ranked": raw["ranked"]},
    ):
        path.write_text(json.dumps({**raw, "ranked": bad}))
        assert read_calibration(tmp_path / "model") is None
    assert "ranked" in caplog.text


def test_the_bundled_models_merged_folder_reads_the_calibration_the_package_ships(tmp_path, monkeypatch):
    """A calibration shipped after a user's first merge still applies: the merged folder is named after the
    adaptation, not its calibration, so the package's copy is read when the folder has none."""
    from diffucoder_lsp.model import bundled

    package = tmp_path / "pkg"
    merged = tmp_path / "cache" / "smollm2-diffusion-abc"
    merged.mkdir(parents=True)
    monkeypatch.setattr(bundled, "BUNDLED_ADAPTATION_DIR", package)
    monkeypatch.setattr(bundled, "has_adaptation", lambda folder=None: True)
    monkeypatch.setattr(bundled, "adapted_target", lambda folder=None: merged)
    assert read_calibration(merged) is None  # nothing shipped yet
    shipped = Calibration("all_mean", 0.5, 0.6, {"alg": "entropy"}, {"requests": 10})
    write_calibration(package, shipped)
    assert read_calibration(merged) == shipped
    assert read_calibration(tmp_path / "other-model") is None  # only the bundled model's folder
    own = Calibration("all_min", 0.3, 0.6, {"alg": "entropy"}, {"requests": 5})
    write_calibration(merged, own)
    assert read_calibration(merged) == own  # a folder's own calibration wins
