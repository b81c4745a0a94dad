"""Where a denoising step's time goes: wall time per step against the device's busy time, and the host
synchronisations inside the step loop (the reads of device values that make the host wait for the device).

On a GPU this says whether the remaining GPU items of fast inference pay: if the device is idle for much of each
step (wall >> kernel time) and the loop syncs many times per step, removing syncs and capturing the step as a
CUDA graph would; if the device is busy nearly all the time, neither would. On a CPU it still counts the host
reads per step (each one a sync on a GPU).

    python scripts/step_profile.py --model CKPT [--device cuda] [--dtype bf16] [--context 1024] [--span 64]
        [--tokens-per-step 1] [--json OUT]

The fill is `diffucoder bench`'s `all` configuration (context cache, blocks of 32, threshold 0.9) on one window
of held-out code (this package's source), after one warm-up fill.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffucoder_lsp import bench as B  # noqa: E402
from diffucoder_lsp.engine.infill import infill_stream  # noqa: E402
from diffucoder_lsp.model.loading import load_model  # noqa: E402

# aten ops that read a device value on the host, so that on a GPU the host waits for the device: .item(), bool()
# and int() of a tensor go through _local_scalar_dense, boolean-mask indexing and nonzero() through nonzero;
# on a GPU the CUDA runtime's own calls are counted too (.tolist() and .cpu() copies show up only there; one
# cudaDeviceSynchronize per step is this script's own, for the step times)
HOST_READS = (
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaMemcpyAsync",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_fill(lm, case, span: int, opts, factory) -> list[float]:
    """One fill, drained step by step; returns each step's wall time in ms (device work included)."""
    times = []
    den = factory()
    _sync(lm.device)
    t = time.perf_counter()
    for _event in infill_stream(
        lm, case.text, length=span, options=opts, denoiser=den, max_context_tokens=1 << 30
    ):
        _sync(lm.device)
        now = time.perf_counter()
        times.append((now - t) * 1000)
        t = now
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint folder (default: the bundled model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--span", type=int, default=64)
    p.add_argument("--tokens-per-step", type=int, default=1)
    p.add_argument("--json", default=None, help="write the figures here as JSON")
    args = p.parse_args(argv)

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    wls = B.build_workloads(
        lm.tokenizer,
        B.held_out_text(None),
        contexts=[args.context],
        spans=[args.span],
        holes=[1],
        cases=1,
        max_tokens=lm.config.max_position_embeddings,
    )
    if not wls:
        print("no workload fits: try a shorter --context", file=sys.stderr)
        return 2
    case = wls[0].cases[0]
    opts, factory = B.configurations(0.9, 0, tokens_per_step=args.tokens_per_step)["all"](lm, args.span)
    run_fill(lm, case, args.span, opts, factory)  # warm-up: allocator, kernels, caches
    wall = run_fill(lm, case, args.span, opts, factory)

    activities = [ProfilerActivity.CPU]
    if lm.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        profiled = run_fill(lm, case, args.span, opts, factory)
    steps = len(profiled)
    events = prof.key_averages()
    reads = {e.key: e.count for e in events if e.key in HOST_READS}
    device_ms = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / 1000
    first, rest = wall[0], wall[1:]
    out = {
        "device": str(lm.device),
        "device_name": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else "cpu",
        "dtype": str(lm.dtype),
        "context": args.context,
        "span": args.span,
        "steps": len(wall),
        "first_step_ms": round(first, 2),  # the context pass and the first step
        "later_step_ms_mean": round(sum(rest) / max(1, len(rest)), 2),
        "fill_ms": round(sum(wall), 1),
        "host_reads_per_step": {k: round(v / steps, 2) for k, v in sorted(reads.items())},
        "device_busy_ms_per_step": round(device_ms / steps, 2) if lm.device.type == "cuda" else None,
        "profiled_wall_ms_per_step": round(sum(profiled) / steps, 2),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
