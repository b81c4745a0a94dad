"""A scripted stand-in for the engine, so UI tests control exactly which token appears at which step.

The runner lays out a canvas like the engine does (context, then ``length`` mask positions per hole) and yields
real ``StepEvent`` objects revealing the scripted (hole, offset, token) triples step by step. An optional gate
makes each step after the first wait for the test, which is how the tests catch a run in the middle.
"""

from __future__ import annotations

import threading

import torch

from diffucoder_lsp.engine.infill import HoleResult, InfillCanvas, InfillResult
from diffucoder_lsp.engine.sampler import StepEvent
from diffucoder_lsp.errors import BadInputError
from diffucoder_lsp.tui.runner import DemoSettings, RunnerInfo

MASK_ID = 99
CONTEXT_ID = 0
VOCAB = {1: "A", 2: "B", 3: "C", 4: "D", 5: "E", 6: "F", 7: "G", 8: "H"}

# Four steps over one 4-token hole, deliberately not left to right: C, A, D, B.
SCRIPT_CADB = [
    [(0, 2, 3, -0.1)],
    [(0, 0, 1, -0.5)],
    [(0, 3, 4, -1.0)],
    [(0, 1, 2, -2.0)],
]


class ScriptedRunner:
    """A ``FillRunner`` that reveals ``script[i]`` at step i: a list of (hole, offset, token, confidence)."""

    def __init__(self, script=SCRIPT_CADB, *, gated: bool = False) -> None:
        self.script = script
        self.gate = threading.Semaphore(0) if gated else None
        self.calls: list[tuple[str, DemoSettings]] = []
        self.computed = 0  # steps computed ("forward passes")
        self.closed = threading.Event()
        self.finished = threading.Event()

    def load(self) -> RunnerInfo:
        return RunnerInfo(name="scripted", device="cpu", dtype="float32")

    def token_text(self, token_id: int) -> str:
        return VOCAB.get(token_id, "?")

    def stream(self, text: str, settings: DemoSettings):
        self.calls.append((text, settings))
        parts = text.split("<|mask|>")
        if len(parts) < 2:
            raise BadInputError("no holes")
        return self._steps(parts, settings.hole_width)

    def _steps(self, parts: list[str], width: int):
        ids: list[int] = []
        spans = []
        for _ in parts[:-1]:
            ids.append(CONTEXT_ID)
            spans.append((len(ids), len(ids) + width))
            ids.extend([MASK_ID] * width)
        ids.append(CONTEXT_ID)
        canvas = InfillCanvas(
            ids=ids,
            hole_spans=spans,
            auto=[False] * len(spans),
            kept_prefix="",
            kept_suffix="",
            segments=parts,
        )
        current = list(ids)
        try:
            for i, reveals in enumerate(self.script):
                if i and self.gate is not None:
                    self.gate.acquire(timeout=10)
                self.computed += 1
                cols = [spans[h][0] + off for h, off, _, _ in reveals]
                for c, (_, _, tok, _) in zip(cols, reveals, strict=True):
                    current[c] = tok
                yield (
                    canvas,
                    StepEvent(
                        step=i,
                        total_steps=len(self.script),
                        rows=torch.zeros(len(cols), dtype=torch.long),
                        cols=torch.tensor(cols, dtype=torch.long),
                        tokens=torch.tensor([t for _, _, t, _ in reveals], dtype=torch.long),
                        confidence=torch.tensor([c for _, _, _, c in reveals], dtype=torch.float32),
                        remaining=sum(1 for t in current if t == MASK_ID),
                    ),
                )
            holes = []
            for a, b in spans:
                toks = current[a:b]
                holes.append(
                    HoleResult(
                        "".join(VOCAB.get(t, "") for t in toks), toks, [0] * len(toks), [0.0] * len(toks)
                    )
                )
            self.finished.set()
            text = parts[0] + "".join(h.text + p for h, p in zip(holes, parts[1:], strict=True))
            return InfillResult(text=text, holes=holes, steps=len(self.script), elapsed_ms=1.0)
        finally:
            self.closed.set()


class FakeClock:
    """A clock that advances 0.25 s per reading: elapsed times in the UI are deterministic."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


async def wait_for(pilot, condition, timeout: float = 5.0, what: str = "condition") -> None:
    """Let the app process messages until ``condition()`` holds (fails the test after ``timeout`` s)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.01)
