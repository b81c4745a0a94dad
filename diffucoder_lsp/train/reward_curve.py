"""Did a GRPO run learn? The reward curve, summarised and plotted.

A step's mean reward swings with the tasks it drew far more than the model moves in a short run (on the shipped
example, a step-to-step standard deviation of 0.14 against a change of a few hundredths), so "the curve went up"
needs a yardstick. :func:`curve_summary` compares the mean reward of the first fifth of the steps with the last
fifth and gives the standard error of that difference from the spread of the steps inside each fifth; a gain of
more than twice that error is one the noise of the run does not explain. Steps walk shuffled passes over every
task (:meth:`GRPOTrainer.pick_tasks`), so when a fifth spans whole passes both fifths hold the same tasks. In a
run too short for that, the tasks' own rewards the first and the last time they were drawn compare like with
like (:func:`revisit_summary`): the difficulty of the prompts, most of a step's swing, cancels out.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def curve_summary(records: list[dict]) -> dict | None:
    """:func:`fifths_summary` of the steps' rewards and :func:`revisit_summary` of their tasks' rewards, in one
    dict; None when neither has enough steps."""
    out = {**(fifths_summary([r["reward"] for r in records]) or {}), **(revisit_summary(records) or {})}
    return out or None


def revisit_summary(records: list[dict]) -> dict | None:
    """Each task's reward the last time a step drew it against the first time (``task_rewards`` of the step
    records): the same prompt before and after training, so a task's difficulty cancels out of the difference,
    which a comparison of steps leaves in. The standard error is that of the mean of the per-task differences.
    None with fewer than 2 tasks drawn twice."""
    visits: dict[str, list[float]] = {}
    for rec in records:
        for task_id, reward in rec.get("task_rewards") or []:
            visits.setdefault(str(task_id), []).append(float(reward))
    pairs = [(v[0], v[-1]) for v in visits.values() if len(v) >= 2]
    if len(pairs) < 2:
        return None
    first, last = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    diff = last - first
    se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
    gain = float(diff.mean())
    return {
        "tasks_revisited": len(pairs),
        "task_reward_first_visit": round(float(first.mean()), 4),
        "task_reward_last_visit": round(float(last.mean()), 4),
        "task_gain": round(gain, 4),
        "task_gain_se": round(se, 4),
        "task_gain_beyond_noise": bool(gain > 2 * se),
    }


def fifths_summary(rewards: list[float]) -> dict | None:
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


def plot_rewards(
    steps: list[int], rewards: list[float], title: str, path: Path, revisit: dict | None = None
) -> str | None:
    """Per-step mean reward, its moving average and the two fifths of :func:`fifths_summary` (and, given, the
    :func:`revisit_summary` in the title); ``path`` as a string, or None when matplotlib is missing."""
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
    summary = fifths_summary(rewards)
    if summary is not None:
        m = summary["steps_per_fifth"]
        for part, key in ((steps[:m], "reward_first_fifth"), (steps[-m:], "reward_last_fifth")):
            ax.hlines(summary[key], part[0], part[-1], colors="black", linewidth=2)
        text = (
            f"{title}: last fifth {summary['reward_gain']:+.3f} over the first "
            f"(standard error {summary['reward_gain_se']:.3f})"
        )
        if revisit:
            text += (
                f"\nthe same {revisit['tasks_revisited']} tasks drawn again: {revisit['task_gain']:+.3f} "
                f"(standard error {revisit['task_gain_se']:.3f})"
            )
        ax.set_title(text, fontsize=10)
    else:
        ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
