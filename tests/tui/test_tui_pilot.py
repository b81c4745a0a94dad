"""The demo driven by a pilot over a scripted sampler: live order, replay, settings, marking, cancel and quit."""

from __future__ import annotations

import threading
import time

import pytest
from textual.widgets import Input, Label, Select
from tui_fakes import FakeClock, ScriptedRunner, wait_for

from diffucoder_lsp.analysis import certainty
from diffucoder_lsp.tui import DemoApp, DemoSettings
from diffucoder_lsp.tui.fill import FillStep
from diffucoder_lsp.tui.history import StepRecord
from diffucoder_lsp.tui.render import heat_style, step_style
from diffucoder_lsp.tui.screens import SettingsScreen
from diffucoder_lsp.tui.widgets import CodeView, Legend, Scrubber, SidePanel
from diffucoder_lsp.tui.widgets.bars import LABEL_WIDTH

SRC = "def f(x):\n    y = <|mask|>\n    return y\n"
SIZE = (100, 28)


def make_app(runner=None, source=SRC, **settings) -> DemoApp:
    settings.setdefault("length", 4)
    return DemoApp(
        runner or ScriptedRunner(),
        source,
        filename="f.py",
        settings=DemoSettings(**settings),
        clock=FakeClock(),
    )


def hole_line(app) -> str:
    return app.demo.query_one(CodeView).plain_lines[1]


def cell_bg(app, line: int, column: int):
    """Background colour of one character of the code view (column in the line's text)."""
    return app.demo.query_one(CodeView).line_text(line).get_style_at_offset(app.console, column).bgcolor


async def run_to_end(app, pilot) -> None:
    await pilot.press("f")
    await wait_for(
        pilot, lambda: app.demo.history is not None and app.demo.history.status == "done", what="run end"
    )


async def test_tokens_appear_live_in_the_scripted_order():
    runner = ScriptedRunner(gated=True)
    app = make_app(runner)
    async with app.run_test(size=SIZE) as pilot:
        assert hole_line(app) == "    y = ░░░░"
        await pilot.press("f")
        expected = ["    y = ░░C░", "    y = A░C░", "    y = A░CD", "    y = ABCD"]
        for step, text in enumerate(expected, start=1):
            await wait_for(
                pilot, lambda s=step: app.demo.history is not None and app.demo.history.steps_done == s
            )
            # the view follows a live run (redraws are spaced by LIVE_REDRAW_INTERVAL, so it may trail a step)
            await wait_for(pilot, lambda s=step: app.demo.view_step == s, what=f"view at step {step}")
            assert hole_line(app) == text
            assert app.demo.running or step == len(expected)
            runner.gate.release()
        await wait_for(pilot, lambda: app.demo.history.status == "done")
        assert not app.demo.running
        # coloured by reveal step: C first (step 0), B last (step 3)
        assert cell_bg(app, 1, 10) == step_style(0, 4).bgcolor
        assert cell_bg(app, 1, 9) == step_style(3, 4).bgcolor
        assert cell_bg(app, 1, 10) != cell_bg(app, 1, 9)
        state = app.demo.query_one(SidePanel).state
        assert state.ar[1] == (0.0, 0.5)  # C A D B: never local; global@1 on A and B
        assert (state.step, state.total_steps, state.revealed, state.tokens_per_step) == (4, 4, 4, 1.0)


async def test_replay_steps_back_forward_and_scrubs():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_to_end(app, pilot)
        await pilot.press("home")
        assert hole_line(app) == "    y = ░░░░"
        seen = []
        for _ in range(5):
            await pilot.press("right")
            seen.append(hole_line(app)[8:])
        assert seen == ["░░C░", "A░C░", "A░CD", "ABCD", "ABCD"]  # the last press stays at the end
        await pilot.press("left", "left")
        assert hole_line(app)[8:] == "A░C░"
        assert app.demo.query_one(SidePanel).state.status == "done (replay)"
        assert app.demo.query_one(Scrubber).value == 2
        # click the scrubber's track: its first cell is step 0, its last cell the last step
        scrubber = app.demo.query_one(Scrubber)
        await pilot.click(Scrubber, offset=(1 + LABEL_WIDTH, 0))
        assert app.demo.view_step == 0 and hole_line(app)[8:] == "░░░░"
        await pilot.click(Scrubber, offset=(scrubber.region.width - 2, 0))
        assert app.demo.view_step == 4
        await pilot.press("end")
        assert app.demo.view_step == 4


async def test_play_replays_to_the_end():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_to_end(app, pilot)
        await pilot.press("p")  # at the end: restarts from step 0
        assert app.demo.view_step <= 1
        await wait_for(pilot, lambda: app.demo.view_step == 4, what="replay end")
        assert hole_line(app)[8:] == "ABCD"


async def test_heat_view_colours_by_confidence():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_to_end(app, pilot)
        await pilot.press("h")
        assert app.demo.query_one(Legend).mode == "heat"
        # the scale spans the run: C (confidence -0.1) is its surest token, B (-2.0) its least sure
        assert cell_bg(app, 1, 10) == heat_style(1.0).bgcolor
        assert cell_bg(app, 1, 9) == heat_style(0.0).bgcolor
        lo, hi = certainty(-2.0, "entropy"), certainty(-0.1, "entropy")
        assert cell_bg(app, 1, 8) == heat_style((certainty(-0.5, "entropy") - lo) / (hi - lo)).bgcolor  # A
        assert app.demo.query_one(Legend).certainty_span == pytest.approx((lo, hi))
        assert f"{lo:.3g}" in str(app.demo.query_one(Legend).render())
        await pilot.press("h")
        assert cell_bg(app, 1, 10) == step_style(0, 4).bgcolor


async def test_settings_change_applies_to_the_next_run():
    runner = ScriptedRunner()
    app = make_app(runner)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        assert isinstance(app.screen, SettingsScreen)
        screen = app.screen
        screen.query_one("#alg", Select).value = "maskgit_plus"
        screen.query_one("#temperature", Input).value = "hot"
        await pilot.click("#apply")
        assert isinstance(app.screen, SettingsScreen)  # rejected, with the reason shown
        assert "temperature" in str(screen.query_one("#error", Label).render())
        screen.query_one("#temperature", Input).value = "0.9"
        screen.query_one("#steps", Input).value = "2"
        screen.query_one("#length", Input).value = "6"
        await pilot.press("ctrl+s")  # the keyboard way (a second click within 0.2 s is ignored by Button)
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen)
        settings = app.demo.settings
        assert (
            settings.options.alg,
            settings.options.temperature,
            settings.options.steps,
            settings.length,
        ) == ("maskgit_plus", 0.9, 2, 6)
        assert hole_line(app) == "    y = " + "░" * 6  # the source view shows the new hole width
        await run_to_end(app, pilot)
        assert runner.calls[-1][1] == settings
        assert app.demo.history.hole_tokens == 6
        # escape cancels without changing anything
        await pilot.press("s")
        app.screen.query_one("#temperature", Input).value = "0.1"
        await pilot.press("escape")
        assert app.demo.settings == settings


async def test_mark_selected_lines_as_a_hole_and_undo():
    runner = ScriptedRunner()
    source = "a = 1\nb = 2\nc = 3\nd = 4\n"
    app = make_app(runner, source=source)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")  # no hole yet: nothing runs
        await pilot.pause()
        assert runner.calls == [] and not app.demo.running
        await pilot.press("down", "shift+down", "m")
        assert app.demo.source == "a = 1\n<|mask|>\nd = 4\n"
        assert app.demo.query_one(CodeView).plain_lines == ["a = 1", "░░░░", "d = 4"]
        await pilot.press("u")
        assert app.demo.source == source
        # the mouse: click line 1, shift+click line 3 (offsets count the border row)
        await pilot.click(CodeView, offset=(6, 1))
        await pilot.click(CodeView, offset=(6, 3), shift=True)
        assert app.demo.query_one(CodeView).selection == (0, 2)
        await pilot.press("m", "u")
        assert app.demo.source == source
        await pilot.press("up", "up", "up")  # back to the first line, selection dropped
        await pilot.press("down", "m", "f")
        await wait_for(pilot, lambda: app.demo.history is not None and app.demo.history.status == "done")
        assert runner.calls[0][0] == "a = 1\n<|mask|>\nc = 3\nd = 4\n"


async def test_cancel_mid_run_keeps_what_was_revealed():
    runner = ScriptedRunner(gated=True)
    app = make_app(runner)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await wait_for(pilot, lambda: app.demo.history is not None and app.demo.history.steps_done == 1)
        await pilot.press("x")
        runner.gate.release()  # let the step in flight finish; the worker then sees the cancel
        await wait_for(pilot, lambda: app.demo.history.status == "cancelled", what="cancel")
        assert runner.closed.wait(5) and not runner.finished.is_set()
        assert runner.computed <= 2
        assert not app.demo.running
        steps = app.demo.history.steps_done
        assert hole_line(app)[8:] in ("░░C░", "A░C░")[:steps]
        await pilot.press("home", "right")
        assert hole_line(app)[8:] == "░░C░"


async def test_messages_from_an_old_run_are_dropped():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_to_end(app, pilot)
        app.demo.post_message(FillStep(app.demo.run_id - 1, StepRecord(4, 5, (1,), (1,), (0.0,), 0, 1.0)))
        await pilot.pause()
        assert app.demo.history.steps_done == 4


async def test_quit_mid_run_stops_the_worker_and_closes_the_sampler():
    runner = ScriptedRunner(gated=True)
    app = make_app(runner)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await wait_for(pilot, lambda: app.demo.history is not None and app.demo.history.steps_done == 1)
        await pilot.press("q")
    assert app.return_code in (0, None)
    assert not app.is_running
    runner.gate.release()  # the step in flight completes; the worker must stop there
    assert runner.closed.wait(5), "the sampler generator was not closed"
    assert not runner.finished.is_set()
    assert runner.computed <= 2 < len(runner.script)


@pytest.mark.parametrize("key", ["left", "p", "x"])
async def test_replay_and_cancel_keys_are_harmless_before_any_run(key):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(key)
        assert app.demo.history is None and app.demo.view_step == 0
        assert hole_line(app) == "    y = ░░░░"


class SlowLoadRunner(ScriptedRunner):
    """A runner whose model takes until the test says so to load."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded = threading.Event()

    def load(self):
        assert self.loaded.wait(10)
        return super().load()


async def test_fill_asked_during_the_load_starts_when_the_model_is_ready():
    runner = SlowLoadRunner()
    app = make_app(runner)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await pilot.pause()
        assert app.demo.pending_run and runner.calls == []
        assert "loading model" in app.demo.query_one(SidePanel).state.status
        runner.loaded.set()
        await wait_for(pilot, lambda: app.demo.history is not None and app.demo.history.status == "done")
        assert len(runner.calls) == 1 and not app.demo.pending_run


async def test_quit_during_the_model_load_does_not_wait_for_it():
    runner = SlowLoadRunner()
    app = make_app(runner)
    start = time.monotonic()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
    assert not app.is_running and time.monotonic() - start < 5
    runner.loaded.set()  # the daemon loader finishes later; posting to the closed app must not raise


async def test_a_fast_live_run_is_redrawn_at_most_every_interval_and_ends_on_its_last_step(monkeypatch):
    """Redrawing every step took the model's cores (~40 ms a redraw on 2 cores): steps that come faster than
    LIVE_REDRAW_INTERVAL share one redraw, and the finished run still shows every token and replays each step."""
    from diffucoder_lsp.tui.screens import demo

    monkeypatch.setattr(demo, "LIVE_REDRAW_INTERVAL", 0.5)
    script = [[(0, i, 1 + i % 8, -0.1 * i)] for i in range(8)]
    runner = ScriptedRunner(script)
    app = make_app(runner, length=8)
    redraws = []
    real = CodeView.set_lines

    def counting(self, lines, mode):
        if mode == "run":
            redraws.append(app.demo.view_step)
        return real(self, lines, mode)

    monkeypatch.setattr(CodeView, "set_lines", counting)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f")
        await wait_for(pilot, lambda: app.demo.history is not None and app.demo.history.status == "done")
        assert runner.computed == 8
        assert app.demo.view_step == 8 and hole_line(app)[8:] == "ABCDEFGH"
        assert len(set(redraws)) < 8  # not one redraw per step
        await pilot.press("home", "right", "right")
        assert hole_line(app)[8:] == "AB░░░░░░"  # replay still has every step


async def test_code_view_repaints_only_the_lines_a_step_changed(monkeypatch):
    """A live step changes a hole's lines: repainting every line per step took the model's CPU time."""
    from rich.text import Text

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_to_end(app, pilot)
        code = app.demo.query_one(CodeView)
        lines = [Text(t) for t in code.plain_lines]
        code.set_lines(lines, "run")
        painted, whole = [], []
        monkeypatch.setattr(type(code), "refresh_lines", lambda self, y, n=1: painted.append((y, n)))
        real = type(code).refresh
        monkeypatch.setattr(
            type(code), "refresh", lambda self, *a, **k: whole.append(a) or real(self, *a, **k)
        )
        changed = list(lines)
        changed[1] = Text("    y = ABCX")
        code.set_lines(changed, "run")
        assert painted == [(1, 1)] and whole == []
        code.set_lines(changed, "run")  # nothing new: nothing repainted
        assert painted == [(1, 1)] and whole == []
        code.set_lines([*changed, Text("more")], "run")  # a line more: the whole view
        assert whole
        await pilot.pause()
        assert code.plain_lines[1] == "    y = ABCX"


async def test_what_the_editor_would_cut_is_struck_through_when_the_run_ends():
    """A runner that knows the editor's cut (the engine runner: the language server's) gets the run's fills at
    the end; the code view then strikes through the rest of each hole. A runner without one strikes nothing."""
    seen = []

    class Cutting(ScriptedRunner):
        def cut(self, text, fills):
            seen.append((text, fills))
            return [fill[:2] for fill in fills]  # keep "AB" of "ABCD"

    app = make_app(Cutting())
    async with app.run_test(size=SIZE) as pilot:
        await run_to_end(app, pilot)
        await pilot.pause()
        assert seen == [(SRC, ["ABCD"])] and app.demo.history.kept == [2]
        line = app.demo.query_one(CodeView).line_text(1)
        assert line.plain == "    y = ABCD"
        struck = [c for i, c in enumerate(line.plain) if line.get_style_at_offset(app.console, i).strike]
        assert struck == ["C", "D"]
    plain = make_app()
    async with plain.run_test(size=SIZE) as pilot:
        await run_to_end(plain, pilot)
        assert plain.demo.history.kept is None
