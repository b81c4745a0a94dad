"""The GRPO curve's verdict: a gain counts when it beats twice its standard error, not because it is positive."""

from __future__ import annotations

import numpy as np
import pytest

from diffucoder_lsp.train.reward_curve import curve_summary, fifths_summary, plot_rewards, revisit_summary


def test_a_steady_rise_beats_the_noise_and_a_noisy_flat_curve_does_not():
    rng = np.random.default_rng(0)
    rising = list(np.linspace(0.2, 0.6, 40) + rng.normal(0, 0.03, 40))
    s = fifths_summary(rising)
    assert s["steps_per_fifth"] == 8
    assert s["reward_first_fifth"] == pytest.approx(np.mean(rising[:8]), abs=1e-4)
    assert s["reward_last_fifth"] == pytest.approx(np.mean(rising[-8:]), abs=1e-4)
    assert s["reward_gain"] > 0.3 and s["reward_gain_beyond_noise"]

    flat = list(0.3 + rng.normal(0, 0.14, 40))
    f = fifths_summary(flat)
    assert abs(f["reward_gain"]) < 2 * f["reward_gain_se"] + 1e-9
    assert not f["reward_gain_beyond_noise"]
    # the same small gain is noise with a big spread and real with a small one
    small = [0.30, 0.31] * 10 + [0.33, 0.34] * 10
    assert fifths_summary(small)["reward_gain_beyond_noise"]
    wide = [0.1, 0.51] * 10 + [0.13, 0.54] * 10
    assert not fifths_summary(wide)["reward_gain_beyond_noise"]


def test_too_short_a_run_has_no_verdict_and_short_runs_compare_two_steps():
    assert fifths_summary([]) is None and fifths_summary([0.1, 0.2, 0.3]) is None
    assert fifths_summary([0.1, 0.2, 0.3, 0.4])["steps_per_fifth"] == 2


def test_the_plot_is_written_with_both_fifths(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_rewards(list(range(1, 21)), list(np.linspace(0, 1, 20)), "GRPO", tmp_path / "r.png")
    assert path == str(tmp_path / "r.png") and (tmp_path / "r.png").stat().st_size > 1000
    assert plot_rewards([], [], "GRPO", tmp_path / "none.png") is None
    revisit = {"tasks_revisited": 4, "task_gain": 0.1, "task_gain_se": 0.02}
    assert plot_rewards(list(range(1, 21)), [0.5] * 20, "GRPO", tmp_path / "r2.png", revisit)


def test_revisits_compare_each_task_with_itself():
    """Tasks of very different difficulty, each a little better the second time: a step comparison drowns the
    gain in the difficulty spread, the per-task one does not."""
    easy_hard = [0.9, 0.1, 0.7, 0.3, 0.5, 0.2]
    records = [{"reward": r, "task_rewards": [[f"t{i}", r]]} for i, r in enumerate(easy_hard)]
    records += [
        {"reward": r + 0.05, "task_rewards": [[f"t{i}", r + 0.05 + 0.01 * (i % 2)]]}
        for i, r in enumerate(easy_hard)
    ]
    s = revisit_summary(records)
    assert s["tasks_revisited"] == 6 and s["task_gain"] == pytest.approx(0.055, abs=1e-4)
    assert s["task_gain_beyond_noise"]
    both = curve_summary(records)
    assert both["task_gain"] == s["task_gain"] and "reward_gain" in both
    # no task drawn twice: nothing to compare; a task's first and last visits are what count
    assert revisit_summary(records[:6]) is None
    three = [
        {"reward": 0, "task_rewards": [["a", 0.0], ["b", 0.5]]},
        {"reward": 0, "task_rewards": [["a", 0.9]]},
    ]
    three += [{"reward": 0, "task_rewards": [["a", 0.2], ["b", 0.5]]}]
    assert revisit_summary(three)["task_reward_last_visit"] == pytest.approx(0.35)
    assert curve_summary([]) is None
