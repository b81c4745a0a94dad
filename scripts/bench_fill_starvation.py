"""How long an inline completion in one file waits while Fill All Holes runs in another (issue: hardening).

Prints the completion's idle latency, its latency ``--delay`` s (0.5) into a fill of N holes, and the fill's own time, on an
in-process server (no transport) with the given model (default: tiny). Usage:
    python scripts/bench_fill_starvation.py [--holes 70] [--model tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from lsprotocol import types

from diffucoder_lsp.model.loading import load_model
from diffucoder_lsp.server import actions
from diffucoder_lsp.server.app import build_server
from diffucoder_lsp.server.engine_client import READY


async def main(holes: int, model: str, delay: float = 0.5) -> None:
    lm = load_model(model, device="cpu")
    ls = build_server()
    ls.apply_settings(
        {"temperature": 0.0, "debounceMs": 0, "speculate": False, "warmContext": False}, initial=True
    )
    ls.engine.lm, ls.engine.state = lm, READY
    ls.show = lambda *a: None
    ls.client_supports = lambda path: False

    async def apply(params):
        return types.ApplyWorkspaceEditResult(applied=True)

    ls.workspace_apply_edit_async = apply
    ls.documents.open("file:///a.py", "".join(f"value_{i} = <|mask|>\n" for i in range(holes)), 1, "python")
    ls.documents.open("file:///b.py", "def add(a, b):\n    return \n", 1, "python")
    t = time.perf_counter()
    await ls.complete_at("file:///b.py", types.Position(line=1, character=11), automatic=False)
    idle = time.perf_counter() - t
    t0 = time.perf_counter()
    fill = asyncio.ensure_future(actions.fill_holes(ls, "file:///a.py"))
    await asyncio.sleep(delay)
    t = time.perf_counter()
    await ls.complete_at("file:///b.py", types.Position(line=1, character=10), automatic=False)
    during = time.perf_counter() - t
    result = await fill
    print(
        f"holes {holes}: completion idle {idle * 1000:.0f} ms, during the fill {during * 1000:.0f} ms "
        f"({during / idle:.1f}x); fill {time.perf_counter() - t0:.1f} s, {result}"
    )
    ls.scheduler.shutdown()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holes", type=int, default=70)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--delay", type=float, default=0.5, help="seconds into the fill the completion is asked")
    a = ap.parse_args()
    asyncio.run(main(a.holes, a.model, a.delay))
