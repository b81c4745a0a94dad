"""The demo's first fill on the built-in sample, timed, and its pictures (issue: newcomer stumbles, README).

Runs ``diffucoder demo``'s app headless (Textual's test pilot) with the model and decoding ``diffucoder demo``
would use, presses ``f`` once the model is loaded, and prints how long the fill took and in how many steps.
With ``--svg DIR`` it also writes Textual's own SVG screenshots: the fill half-way (tokens appearing out of
order, mid-file) and done with the confidence heat view. Usage:
    python scripts/demo_screenshot.py [--model M] [--decoding fast|plain] [--svg docs/images [--at 0.3]]
Other options go to ``diffucoder demo`` (e.g. ``--block-size 32``). It also prints each hole's tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from diffucoder_lsp.cli import build_parser
from diffucoder_lsp.commands.demo import build_app


async def main(argv: list[str], svg: Path | None, size: tuple[int, int], at: float = 0.5) -> None:
    app = build_app(build_parser().parse_args(["demo", *argv]))
    async with app.run_test(size=size) as pilot:
        t0 = time.perf_counter()
        while app.demo.info is None:
            await pilot.pause(0.1)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        await pilot.press("f")
        while app.demo.history is None or app.demo.history.status != "done":
            await pilot.pause(0.05)
        fill_s = time.perf_counter() - t0
        h = app.demo.history
        print(
            f"model {app.demo.info.name}: load {load_s:.1f} s; first fill {fill_s:.1f} s, {h.steps_done} steps"
        )
        for i, hole in enumerate(h.holes_at(h.steps_done)):
            text = "".join(app.runner.token_text(t.token) for t in hole if t.token is not None)
            print(f"hole {i + 1}: {text!r}")
        if svg is not None:
            svg.mkdir(parents=True, exist_ok=True)
            await pilot.press("home")
            for _ in range(round(h.steps_done * at)):
                await pilot.press("right")
            await pilot.pause(0.2)
            app.save_screenshot("demo-midway.svg", str(svg))
            await pilot.press("end", "h")
            await pilot.pause(0.2)
            app.save_screenshot("demo-heat.svg", str(svg))
            print(f"wrote {svg / 'demo-midway.svg'} and {svg / 'demo-heat.svg'}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--decoding", default=None, choices=("fast", "plain", "exact"))
    ap.add_argument("--svg", type=Path, default=None)
    ap.add_argument("--at", type=float, default=0.3, help="the mid-way picture's step, as a share of the run")
    ap.add_argument("--width", type=int, default=110)
    ap.add_argument("--height", type=int, default=30)
    a, rest = ap.parse_known_args()  # anything else goes to `diffucoder demo` (e.g. --threshold 0.9)
    extra = (
        (["--model", a.model] if a.model else []) + (["--decoding", a.decoding] if a.decoding else []) + rest
    )
    asyncio.run(main(extra, a.svg, (a.width, a.height), a.at))
    sys.exit(0)
