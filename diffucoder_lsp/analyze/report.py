"""The outputs of ``diffucoder analyze``: the recorded runs pooled per temperature into a JSON, and PNG plots.

Per temperature: local and global AR-ness@k for k = 1..max_k (pooled over all holes, see
:mod:`diffucoder_lsp.analysis`), the reveal-order heatmap, and the mean first-step confidence at each offset from
the prefix end. The paper's two findings read straight off it: AR-ness falls as temperature rises, and the
first-step confidence peaks at offset 0 (the "entropy sink" right after the prefix).

Three plots, one question each:

* ``ar_ness.png``: local and global AR-ness@k against k, one line per temperature (does heat make the decoder
  less left-to-right?).
* ``reveal_heatmap.png``: per temperature, when (decode order, top to bottom) each part of the hole (left to
  right) was revealed. A left-to-right decoder draws the diagonal.
* ``first_step_confidence.png``: mean first-step confidence against the offset from the prefix end (is there
  an entropy sink right after the prefix?).

matplotlib is imported inside the plot functions only, with the Agg backend: the JSON needs neither it nor a
display.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..analysis import confidence_by_offset, global_ar_ness, local_ar_ness, reveal_heatmap
from .collect import TaskRun

JSON_NAME = "analysis.json"
MIN_COUNT_SHARE = 0.2  # offsets seen in fewer than this share of runs are too noisy to draw


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarize_temperature(runs: Sequence[TaskRun], max_k: int, bins: int) -> dict:
    """The pooled statistics of the runs of one temperature."""
    spans = [r.reveal_steps for r in runs]
    conf = confidence_by_offset(r.first_step_certainty for r in runs)
    return {
        "runs": len(runs),
        "tokens": sum(r.length for r in runs),
        "mean_steps": _round(sum(r.steps for r in runs) / len(runs), 2) if runs else None,
        "local_ar_ness": {str(k): _round(local_ar_ness(spans, k)) for k in range(1, max_k + 1)},
        "global_ar_ness": {str(k): _round(global_ar_ness(spans, k)) for k in range(1, max_k + 1)},
        "reveal_heatmap": [[round(v, 4) for v in row] for row in reveal_heatmap(spans, bins)],
        "first_step_confidence": [
            {"offset": off, "mean": round(mean, 5), "count": count} for off, mean, count in conf
        ],
        "elapsed_s": round(sum(r.elapsed_ms for r in runs) / 1000, 3),
    }


def summarize(
    runs: Sequence[TaskRun],
    temperatures: Sequence[float],
    *,
    max_k: int,
    bins: int,
    meta: dict,
) -> dict:
    """The whole report: ``meta`` (model, tasks, settings), one entry per temperature, and every raw run."""
    return {
        **meta,
        "max_k": max_k,
        "heatmap_bins": bins,
        "heatmap_axes": "heat[t][p]: share of tokens at relative position bin p decoded in relative time bin t",
        "temperatures": [
            {"temperature": t, **summarize_temperature([r for r in runs if r.temperature == t], max_k, bins)}
            for t in temperatures
        ],
        "runs": [r.to_json() for r in runs],
    }


def write_json(summary: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / JSON_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# --- plots ---------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_ar_ness(summary: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in (
        (axes[0], "local_ar_ness", "local AR-ness@k"),
        (axes[1], "global_ar_ness", "global AR-ness@k"),
    ):
        for entry in summary["temperatures"]:
            points = [(int(k), v) for k, v in entry[key].items() if v is not None]
            if points:
                ks, vs = zip(*points, strict=True)
                ax.plot(ks, vs, marker="o", label=f"T = {entry['temperature']:g}")
        ax.set_title(title)
        ax.set_xlabel("k")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of reveals")
    axes[1].legend()
    fig.suptitle("How left-to-right the decoding was (1 = autoregressive)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmaps(summary: dict, path: Path) -> Path:
    plt = _pyplot()
    entries = summary["temperatures"]
    fig, axes = plt.subplots(1, len(entries), figsize=(3.6 * len(entries) + 0.8, 3.8), squeeze=False)
    image = None
    for ax, entry in zip(axes[0], entries, strict=True):
        image = ax.imshow(
            entry["reveal_heatmap"], origin="upper", cmap="viridis", vmin=0, vmax=1, aspect="auto"
        )
        ax.set_title(f"T = {entry['temperature']:g}")
        ax.set_xlabel("position in hole (left → right)")
        ax.set_ylabel("decode order (first → last)")
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label="share of the column")
    fig.suptitle("Reveal order")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_first_step_confidence(summary: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for entry in summary["temperatures"]:
        floor = max(1, round(MIN_COUNT_SHARE * entry["runs"]))
        points = [(p["offset"], p["mean"]) for p in entry["first_step_confidence"] if p["count"] >= floor]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=".", label=f"T = {entry['temperature']:g}")
    ax.set_xlabel("offset from the prefix end (tokens)")
    ax.set_ylabel("mean first-step confidence (0-1)")
    ax.set_title("First-step confidence by position")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(summary: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_ar_ness(summary, out_dir / "ar_ness.png"),
        plot_heatmaps(summary, out_dir / "reveal_heatmap.png"),
        plot_first_step_confidence(summary, out_dir / "first_step_confidence.png"),
    ]
