"""The GRPO curve's verdict: a gain counts when it beats twice its standard error, not because it is positive."""

from __future__ import annotations

import numpy as np
import pytest

from diffucoder_lsp.train.reward_curve import curve_summary, plot_rewards


def test_a_steady_rise_beats_the_noise_and_a_noisy_flat_curve_does_not():
    rng = np.random.default_rng(0)
    rising = list(np.linspace(0.2, 0.6, 40) + rng.normal(0, 0.03, 40))
    s = curve_summary(rising)
    assert s["steps_per_fifth"] == 8
    assert s["reward_first_fifth"] == pytest.approx(np.mean(rising[:8]), abs=1e-4)
    assert s["reward_last_fifth"] == pytest.approx(np.mean(rising[-8:]), abs=1e-4)
    assert s["reward_gain"] > 0.3 and s["reward_gain_beyond_noise"]

    flat = list(0.3 + rng.normal(0, 0.14, 40))
    f = curve_summary(flat)
    assert abs(f["reward_gain"]) < 2 * f["reward_gain_se"] + 1e-9
    assert not f["reward_gain_beyond_noise"]
    # the same small gain is noise with a big spread and real with a small one
    small = [0.30, 0.31] * 10 + [0.33, 0.34] * 10
    assert curve_summary(small)["reward_gain_beyond_noise"]
    wide = [0.1, 0.51] * 10 + [0.13, 0.54] * 10
    assert not curve_summary(wide)["reward_gain_beyond_noise"]


def test_too_short_a_run_has_no_verdict_and_short_runs_compare_two_steps():
    assert curve_summary([]) is None and curve_summary([0.1, 0.2, 0.3]) is None
    assert curve_summary([0.1, 0.2, 0.3, 0.4])["steps_per_fifth"] == 2


def test_the_plot_is_written_with_both_fifths(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_rewards(list(range(1, 21)), list(np.linspace(0, 1, 20)), "GRPO", tmp_path / "r.png")
    assert path == str(tmp_path / "r.png") and (tmp_path / "r.png").stat().st_size > 1000
    assert plot_rewards([], [], "GRPO", tmp_path / "none.png") is None
