"""Benchmark the HTTP backend: N simulated editors on one backend, batched against one request at a time.

Starts ``diffucoder backend`` twice on the same model, once with ``--max-batch`` (batching) and once with
``--max-batch 1`` (every request alone, in arrival order), and runs the same load against each: N editors, each
sending ``--requests`` completions one after another (what a language server sends: ``/v1/infill`` with the
server's default decoding, a 20-token single-line or 48-token block span at a line end of a source file of this
repository, cut to the server's 512-token context), pausing ``--think-ms`` between them as a user typing does.
Reports throughput (completions per second over the run) and latency percentiles of each mode, and their ratios.

``--typing K``: after each cursor's request the editor types the next K characters of the file there, one
request per keystroke, all in its own ``X-Request-Group``: the load an editor really sends, where the backend
starts each request from its group's last context (``--context-stores``; 0 turns that off in both modes).

    .venv/bin/python scripts/bench_backend.py --model tiny            # the tiny random model, CPU
    .venv/bin/python scripts/bench_backend.py --editors 16 --json out.json

The editors run as threads of this process; the backend is a separate process, so its model thread does not
share an interpreter lock with them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffucoder_lsp.server.remote_engine import request_body  # noqa: E402
from diffucoder_lsp.server.settings import Settings  # noqa: E402

MARKER = "<|mask|>"


def cursors(n: int, seed: int) -> list[tuple[str, str, int]]:
    """(prefix, suffix, span) at line ends of this repository's sources: what editors would ask for."""
    rng = random.Random(seed)
    files = sorted((ROOT / "diffucoder_lsp").rglob("*.py"))
    out = []
    while len(out) < n:
        text = rng.choice(files).read_text(encoding="utf-8")
        ends = [i for i, c in enumerate(text) if c == "\n" and i > 200]
        if not ends:
            continue
        at = rng.choice(ends)
        line_start = text.rfind("\n", 0, at) + 1
        # mid-line with code after the cursor: a single line (20 tokens); at a line end: a block (48)
        cut = rng.choice([at, line_start + max(1, (at - line_start) // 2)])
        span = 48 if cut == at else 20
        prefix = text[max(0, cut - 1800) : cut]
        prefix = prefix[prefix.find("\n") + 1 :] if cut > 1800 else prefix
        suffix = text[cut : cut + 700]
        suffix = suffix[: suffix.rfind("\n") + 1] or suffix
        out.append((prefix.replace(MARKER, "<|m|>"), suffix.replace(MARKER, "<|m|>"), span))
    return out


def typed(points: list[tuple[str, str, int]], keys: int) -> list[tuple[str, str, int]]:
    """Each cursor, then the file's next ``keys`` characters typed there one at a time (a request each)."""
    out = []
    for prefix, suffix, span in points:
        for k in range(min(keys, len(suffix)) + 1):
            out.append((prefix + suffix[:k], suffix[k:], span))
    return out


def start_backend(
    model: str | None, max_batch: int, gather_ms: float, context_stores: int = 32
) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "diffucoder_lsp.cli",
        "backend",
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
    ]
    cmd += ["--gather-ms", str(gather_ms), "--context-stores", str(context_stores)]
    cmd += ["--model", model] if model else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the backend did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)


def run_load(url: str, work: list[list[tuple[str, str, int]]], think_ms: float) -> dict:
    settings = Settings()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(work))

    def editor(i: int, jobs) -> None:
        rng = random.Random(i)
        with httpx.Client(timeout=600) as client:
            barrier.wait()
            for prefix, suffix, span in jobs:
                window = settings.context_tokens + span + 64
                body = request_body(
                    prefix + MARKER + suffix, [span], settings, window, span == 20, "first_line_min"
                )
                t0 = time.perf_counter()
                r = client.post(url + "/v1/infill", json=body, headers={"X-Request-Group": f"editor-{i}"})
                dt = time.perf_counter() - t0
                with lock:
                    (
                        latencies.append(dt)
                        if r.status_code == 200
                        else failures.append(f"{r.status_code} {r.text[:200]}")
                    )
                time.sleep(rng.uniform(0, 2 * think_ms) / 1000)

    threads = [threading.Thread(target=editor, args=(i, jobs)) for i, jobs in enumerate(work)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    metrics = httpx.get(url + "/metrics", timeout=30).text
    batches = [line for line in metrics.splitlines() if line.startswith("diffucoder_batch_rows_")]
    qs = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {
        "requests": len(latencies),
        "failures": failures,
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 3),
        "p50_s": round(qs[49], 3),
        "p95_s": round(qs[94], 3),
        "mean_batch_rows": _mean_batch(batches),
        "context_reused_share": _reused_share(metrics),
    }


def _reused_share(metrics: str) -> float | None:
    """Share of the first passes' canvas positions taken from stored contexts (over the backend's life)."""
    counts = {}
    for line in metrics.splitlines():
        if line.startswith(
            ("diffucoder_context_computed_tokens_total", "diffucoder_context_reused_tokens_total")
        ):
            name, value = line.rsplit(" ", 1)
            counts[name] = float(value)
    total = sum(counts.values())
    return round(counts.get("diffucoder_context_reused_tokens_total", 0.0) / total, 3) if total else None


def _mean_batch(lines: list[str]) -> float | None:
    values = dict(line.rsplit(" ", 1) for line in lines if "_sum" in line or "_count" in line)
    total = float(values.get("diffucoder_batch_rows_sum", 0))
    count = float(values.get("diffucoder_batch_rows_count", 0))
    return round(total / count, 2) if count else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="the model to serve (default: the bundled one)")
    p.add_argument("--editors", type=int, default=16)
    p.add_argument(
        "--requests",
        type=int,
        default=4,
        help="cursors per editor (a completion each, and one per --typing key)",
    )
    p.add_argument("--think-ms", type=float, default=100.0, help="mean pause between an editor's requests")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--gather-ms", type=float, default=5.0)
    p.add_argument("--typing", type=int, default=0, help="keystrokes typed after each cursor, a request each")
    p.add_argument("--context-stores", type=int, default=32, help="the backend's flag, in both modes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    points = cursors(args.editors * args.requests, args.seed)
    work = [typed(points[i :: args.editors], args.typing) for i in range(args.editors)]
    results = {}
    for name, max_batch in (("batched", args.max_batch), ("one_at_a_time", 1)):
        proc, url = start_backend(args.model, max_batch, args.gather_ms, args.context_stores)
        try:
            # warm-up: first-call costs, not measured (another file, so no editor's context is kept from it)
            run_load(url, [[("x = 1\n" * 40, "\n", w[0][2])] for w in work], args.think_ms)
            results[name] = run_load(url, work, args.think_ms)
        finally:
            proc.terminate()
            proc.wait(30)
        r = results[name]
        print(
            f"{name:>14}: {r['requests']} completions in {r['wall_s']:.1f} s = {r['throughput_rps']:.2f}/s, "
            f"p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, mean batch {r['mean_batch_rows']}, "
            f"context reused {r['context_reused_share']}, "
            f"failures {len(r['failures'])}",
            flush=True,
        )
    b, s = results["batched"], results["one_at_a_time"]
    summary = {
        "throughput_ratio": round(b["throughput_rps"] / s["throughput_rps"], 2),
        "p50_ratio": round(b["p50_s"] / s["p50_s"], 2),
        "p95_ratio": round(b["p95_s"] / s["p95_s"], 2),
    }
    print(
        f"batched / one at a time: throughput x{summary['throughput_ratio']}, p50 x{summary['p50_ratio']}, "
        f"p95 x{summary['p95_ratio']} (lower latency ratio is better)"
    )
    if args.json:
        config = {
            k: getattr(args, k)
            for k in (
                "model",
                "editors",
                "requests",
                "typing",
                "context_stores",
                "think_ms",
                "max_batch",
                "gather_ms",
                "seed",
            )
        }
        Path(args.json).write_text(json.dumps({"config": config, **results, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
