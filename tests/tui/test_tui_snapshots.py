"""Snapshots of the demo's main screens at a fixed terminal size, compared with committed SVG exports.

The SVG is Textual's own screenshot export (``App.export_screenshot``), deterministic for a given screen: the
scripted runner and the fake clock fix every number on it. When a change to the UI is intended, regenerate
with ``DIFFUCODER_UPDATE_SNAPSHOTS=1 pytest tests/tui/test_tui_snapshots.py``, look at the new files (they open
in a browser) and commit them. A missing snapshot fails rather than silently passing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tui_fakes import FakeClock, ScriptedRunner, wait_for

from diffucoder_lsp.tui import DemoApp, DemoSettings

SNAPSHOTS = Path(__file__).parent / "snapshots"
SIZE = (100, 28)
SRC = '''def mean(values: list[float]) -> float:
    """Arithmetic mean of a non-empty list."""
    total = <|mask|>
    return total / len(values)
'''


def check_snapshot(app: DemoApp, name: str) -> None:
    svg = app.export_screenshot(title="diffucoder demo")
    path = SNAPSHOTS / f"{name}.svg"
    if os.environ.get("DIFFUCODER_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(svg, encoding="utf-8")
    assert path.is_file(), f"no snapshot {path.name}: run with DIFFUCODER_UPDATE_SNAPSHOTS=1 and review it"
    expected = path.read_text(encoding="utf-8")
    if svg != expected:
        actual = Path(tempfile.gettempdir()) / f"{name}.actual.svg"
        actual.write_text(svg, encoding="utf-8")
        raise AssertionError(f"{name} differs from its snapshot; the new render is {actual}")


def make_app() -> DemoApp:
    return DemoApp(
        ScriptedRunner(), SRC, filename="mean.py", settings=DemoSettings(length=4), clock=FakeClock()
    )


async def settle(pilot) -> None:
    for _ in range(3):  # the footer recomposes after binding changes; let it finish
        await pilot.pause()


async def test_snapshot_source_view():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.demo.info is not None)
        await settle(pilot)
        check_snapshot(app, "source_view")


async def test_snapshot_finished_run_by_step():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await wait_for(pilot, lambda: app.demo.history is not None and app.demo.history.status == "done")
        await settle(pilot)
        check_snapshot(app, "run_done_steps")


async def test_snapshot_replay_in_heat_view():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await wait_for(pilot, lambda: app.demo.history is not None and app.demo.history.status == "done")
        await pilot.press("left", "h")
        await settle(pilot)
        check_snapshot(app, "replay_heat")


async def test_snapshot_settings_dialog():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.demo.info is not None)
        await pilot.press("s")
        await settle(pilot)
        check_snapshot(app, "settings")
