"""Did a GRPO run learn? The reward curve, summarised and plotted.

A step's mean reward swings with the tasks it drew far more than the model moves in a short run (on the shipped
example, a step-to-step standard deviation of 0.14 against a change of a few hundredths), so "the curve went up"
needs a yardstick. :func:`curve_summary` compares the mean reward of the first fifth of the steps with the last
fifth and gives the standard error of that difference from the spread of the steps inside each fifth; a gain of
more than twice that error is one the noise of the run does not explain. Steps walk shuffled passes over every
task (:meth:`GRPOTrainer.pick_tasks`), so when a fifth spans whole passes both fifths hold the same tasks.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def curve_summary(rewards: list[float]) -> dict | None:
    """First fifth against last fifth of the steps' mean rewards (at least 2 steps each, for a spread); None
    with fewer than 4 steps."""
    r = np.asarray(rewards, dtype=float)
    m = max(2, len(r) // 5)
    if len(r) < 2 * m:
        return None
    first, last = r[:m], r[-m:]
    se = math.sqrt(first.var(ddof=1) / m + last.var(ddof=1) / m)
    gain = float(last.mean() - first.mean())
    return {
        "steps_per_fifth": m,
        "reward_first_fifth": round(float(first.mean()), 4),
        "reward_last_fifth": round(float(last.mean()), 4),
        "reward_gain": round(gain, 4),
        "reward_gain_se": round(se, 4),
        "reward_gain_beyond_noise": bool(gain > 2 * se),
    }


def plot_rewards(steps: list[int], rewards: list[float], title: str, path: Path) -> str | None:
    """Per-step mean reward, its moving average and the two fifths of :func:`curve_summary`; ``path`` as a
    string, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no reward plot (pip install matplotlib)")
        return None
    if not rewards:
        return None
    rew = np.asarray(rewards, dtype=float)
    k = max(1, len(rew) // 10)
    smooth = np.convolve(rew, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, rew, alpha=0.4, label="mean reward")
    ax.plot(steps[k - 1 :], smooth, label=f"moving average ({k})")
    summary = curve_summary(rewards)
    if summary is not None:
        m = summary["steps_per_fifth"]
        for part, key in ((steps[:m], "reward_first_fifth"), (steps[-m:], "reward_last_fifth")):
            ax.hlines(summary[key], part[0], part[-1], colors="black", linewidth=2)
        ax.set_title(
            f"{title}: last fifth {summary['reward_gain']:+.3f} over the first "
            f"(standard error {summary['reward_gain_se']:.3f})",
            fontsize=10,
        )
    else:
        ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
