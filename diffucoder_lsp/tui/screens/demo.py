"""The demo screen: edit holes, run a fill live, replay it, and read its numbers.

State lives here and flows one way: the screen owns the source text, the settings, the current run's
:class:`~diffucoder_lsp.tui.history.FillHistory` and the step on view; widgets only draw what they are given.
A fill runs in a thread worker (:func:`~diffucoder_lsp.tui.fill.drain_fill`) that posts one message per step;
the handlers append to the history and, while the view follows the run, move the view to the newest step.
Replay is moving ``view_step`` over a finished (or cancelled) history; nothing is recomputed.

The model loads on a plain daemon thread, not a worker: Textual's thread workers run in asyncio's executor,
which the process waits for on exit, and quitting while a 15 GB checkpoint loads must not wait for the load.
A fill asked for before the model is ready waits for it (``pending_run``) instead of blocking a worker.

Keys: f fill, x cancel, ←/→ step, home/end first/last, p play, h colour by step/confidence, shift+↑/↓ select
lines, m mark them as a hole, u undo, e back to the source, s settings, q quit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Header
from textual.worker import get_current_worker

from ..fill import (
    FillCancelled,
    FillFailed,
    FillFinished,
    FillStarted,
    FillStep,
    ModelFailed,
    ModelReady,
    drain_fill,
)
from ..history import FillHistory
from ..render import MARKER, certainty_range, document_lines, run_pieces, source_pieces
from ..runner import DemoSettings, FillRunner, RunnerInfo
from ..widgets import CodeView, Legend, PanelState, Scrubber, SidePanel, mark_lines
from ..widgets.side_panel import AR_KS
from .settings import SettingsScreen

PLAY_INTERVAL = 0.08  # seconds per step when replaying
# A live run redraws at most this often. A redraw rebuilds the document's highlighted lines and repaints the
# changed ones on the UI thread, CPU time taken from the cores the model steps on (2 on a small machine). Steps
# that arrive in between are shown by the next redraw; replay still shows every step.
LIVE_REDRAW_INTERVAL = 0.25
log = logging.getLogger(__name__)


class DemoScreen(Screen):
    """Code view with legend and replay bar on the left, run panel on the right."""

    DEFAULT_CSS = """
    DemoScreen #body {
        height: 1fr;
    }
    DemoScreen #main {
        width: 1fr;
    }
    DemoScreen CodeView {
        height: 1fr;
    }
    """
    BINDINGS = [
        Binding("f", "run", "Fill"),
        Binding("x", "cancel", "Cancel"),
        Binding("left", "step(-1)", "Step back"),
        Binding("right", "step(1)", "Step fwd"),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump_end", "Last", show=False),
        Binding("p", "play", "Play"),
        Binding("h", "toggle_heat", "Heat"),
        Binding("m", "mark", "Mark hole"),
        Binding("u", "undo", "Undo"),
        Binding("e", "edit", "Edit", show=False),
        Binding("s", "settings", "Settings"),
        Binding("q", "quit", "Quit"),
    ]

    # Their watchers refresh the widgets that show them; a repaint of the screen itself would redraw every cell
    # (a full compositor update, ~40 ms on a 2-core CPU, per live step).
    view_step: reactive[int] = reactive(0, init=False, repaint=False)
    colour_mode: reactive[str] = reactive("step", init=False, repaint=False)

    def __init__(
        self,
        runner: FillRunner,
        source: str,
        *,
        lexer: str,
        settings: DemoSettings,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.runner = runner
        self.source = source
        self.lexer = lexer
        self.settings = settings
        self.clock = clock
        self.info: RunnerInfo | None = None
        self.load_error = ""
        self.history: FillHistory | None = None
        self.run_settings = settings
        self.run_text: str | None = None  # the text the current run fills (the source may change meanwhile)
        self.run_id = 0
        self.running = False
        self.pending_run = False
        self.cancelling = False
        self.follow = True
        self.showing_run = False
        self._undo: list[str] = []
        self._player: Timer | None = None
        self._redraw: Timer | None = None  # a live redraw waiting for LIVE_REDRAW_INTERVAL to pass
        self._last_redraw = float("-inf")
        self._available: tuple[bool, bool] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            with Vertical(id="main"):
                yield CodeView(id="code")
                yield Legend()
                yield Scrubber()
            yield SidePanel(id="panel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(CodeView).focus()
        self._refresh()
        self._load_model()

    # --- workers -------------------------------------------------------------------------------------------

    def _load_model(self) -> None:
        threading.Thread(target=self._load_in_background, name="demo-model-load", daemon=True).start()

    def _load_in_background(self) -> None:
        try:
            info = self.runner.load()
            message = ModelReady(info)
        except Exception as exc:  # a broken checkpoint: say so in the app rather than crash it
            log.debug("model load failed", exc_info=True)
            message = ModelFailed(f"{type(exc).__name__}: {exc}")
        try:
            self.post_message(message)
        except RuntimeError:  # the app quit during the load and its event loop is gone
            log.debug("model loaded after the app closed")

    @work(thread=True, exclusive=True, group="fill", exit_on_error=False)
    def _fill(self, text: str, settings: DemoSettings, run_id: int) -> str:
        worker = get_current_worker()
        return drain_fill(
            self.runner,
            text,
            settings,
            run_id=run_id,
            post=self.post_message,
            is_cancelled=lambda: worker.is_cancelled,
            clock=self.clock,
        )

    # --- messages from the workers --------------------------------------------------------------------------

    def on_model_ready(self, message: ModelReady) -> None:
        self.info = message.info
        self._refresh_panel()
        if self.pending_run:
            self.pending_run = False
            self.action_run()

    def on_model_failed(self, message: ModelFailed) -> None:
        self.load_error = message.error
        self.pending_run = False
        self.notify(f"cannot load the model: {message.error}", severity="error", timeout=10)
        self._refresh_panel()

    def on_fill_started(self, message: FillStarted) -> None:
        if message.run_id == self.run_id:
            self.history = FillHistory(message.canvas)
            self.showing_run = True

    def on_fill_step(self, message: FillStep) -> None:
        if message.run_id != self.run_id or self.history is None:
            return
        self.history.apply(message.record)
        wait = LIVE_REDRAW_INTERVAL - (time.monotonic() - self._last_redraw)
        if wait <= 0:
            self._live_redraw()
        elif self._redraw is None:
            self._redraw = self.set_timer(wait, self._live_redraw)

    def _live_redraw(self) -> None:
        """Show the run's newest step (or, when the user stepped back, only its numbers)."""
        self._cancel_redraw()
        self._last_redraw = time.monotonic()
        if self.history is None:
            return
        if self.follow:
            self._set_view(self.history.steps_done)
        else:
            self._refresh_chrome()

    def _cancel_redraw(self) -> None:
        if self._redraw is not None:
            self._redraw.stop()
            self._redraw = None

    def on_fill_finished(self, message: FillFinished) -> None:
        if message.run_id == self.run_id:
            self._mark_cut(message.result)
            self._end_run("done", message.elapsed)

    def _mark_cut(self, result) -> None:
        """Strike through what the editor would cut of each hole (a runner that knows the editor's cut offers
        ``cut(text, fills) -> shown``; a scripted or remote one may not)."""
        cut = getattr(self.runner, "cut", None)
        if cut is None or self.history is None or self.run_text is None:
            return
        try:
            shown = cut(self.run_text, [h.text for h in result.holes])
        except Exception:  # a display nicety: never let it end the run badly
            log.debug("no cut for this run", exc_info=True)
            return
        canvas = self.history.canvas
        self.history.cut_at(
            [None if t is None else canvas.lead(j) + t for j, t in enumerate(shown)], self.runner.token_text
        )

    def on_fill_cancelled(self, message: FillCancelled) -> None:
        if message.run_id == self.run_id:
            self._end_run("cancelled", message.elapsed)

    def on_fill_failed(self, message: FillFailed) -> None:
        if message.run_id == self.run_id:
            self.notify(message.error, title="fill failed", severity="error", timeout=8)
            self._end_run("failed", None)

    def _end_run(self, status: str, elapsed: float | None) -> None:
        self.running = False
        self.cancelling = False
        if self.history is not None:
            self.history.finish(status, elapsed)
        self._cancel_redraw()
        self._last_redraw = float("-inf")
        if self.follow and self.history is not None:
            self._set_view(self.history.steps_done)  # the last steps, whatever a pending redraw held back
        self._refresh()

    # --- actions -------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Grey out keys that do nothing right now (Footer shows them dimmed)."""
        if action == "cancel":
            return True if self.running else None
        if action in ("step", "jump", "jump_end", "play"):
            return True if self.history is not None and self.history.steps_done else None
        if action in ("mark", "undo"):
            return None if self.running else True
        return True

    def action_run(self) -> None:
        if self.running:
            self.notify("a fill is already running (x cancels it)", severity="warning")
            return
        if MARKER not in self.source:
            self.notify("no holes: select lines with shift+↑/↓ and press m", severity="warning")
            return
        if self.info is None and not self.load_error:
            self.pending_run = True  # starts when ModelReady arrives
            self._refresh_panel()
            return
        self._stop_player()
        self._cancel_redraw()
        self._last_redraw = float("-inf")  # a new run's first step shows at once
        self.run_id += 1
        self.running = True
        self.follow = True
        self.history = None
        self.showing_run = False
        self.run_settings = self.settings
        self.run_text = self.source
        self.view_step = 0
        self._refresh()
        self._fill(self.source, self.settings, self.run_id)

    def action_cancel(self) -> None:
        if self.running:
            self.cancelling = True
            self.workers.cancel_group(self, "fill")
            self._refresh_panel()

    def action_quit(self) -> None:
        self.workers.cancel_group(self, "fill")  # the worker closes the sampler at its next step boundary
        self.app.exit()

    def action_step(self, delta: int) -> None:
        self._stop_player()
        self._manual_view(self.view_step + delta)

    def action_jump(self, view: int) -> None:
        self._stop_player()
        self._manual_view(view)

    def action_jump_end(self) -> None:
        self._stop_player()
        if self.history is not None:
            self._manual_view(self.history.steps_done)

    def action_play(self) -> None:
        if self._player is not None:
            self._stop_player()
            return
        if self.history is None or not self.history.steps_done:
            return
        if self.view_step >= self.history.steps_done:
            self._manual_view(0)
        self._player = self.set_interval(PLAY_INTERVAL, self._play_tick)

    def _play_tick(self) -> None:
        if self.history is None or self.view_step >= self.history.steps_done:
            self._stop_player()
            return
        self._manual_view(self.view_step + 1)

    def _stop_player(self) -> None:
        if self._player is not None:
            self._player.stop()
            self._player = None

    def action_toggle_heat(self) -> None:
        self.colour_mode = "heat" if self.colour_mode == "step" else "step"

    def action_edit(self) -> None:
        self._stop_player()
        self.showing_run = False
        self._refresh()

    def action_mark(self) -> None:
        if self.running:
            return
        if self.showing_run:  # the cursor lives in the source view: go there first
            self.action_edit()
            self.notify("editing the source: select lines, then m")
            return
        first, last = self.query_one(CodeView).selection
        self._undo.append(self.source)
        self.source = mark_lines(self.source, first, last)
        code = self.query_one(CodeView)
        code.anchor_line = None
        code.cursor_line = first
        self._refresh()

    def action_undo(self) -> None:
        if self.running or not self._undo:
            return
        self.source = self._undo.pop()
        self.showing_run = False
        self._refresh()

    def action_settings(self) -> None:
        self.app.push_screen(SettingsScreen(self.settings), self._settings_done)

    def _settings_done(self, settings: DemoSettings | None) -> None:
        if settings is not None and settings != self.settings:
            self.settings = settings
            self.notify("settings apply from the next fill (f)")
            self._refresh()

    def on_scrubber_changed(self, message: Scrubber.Changed) -> None:
        self._stop_player()
        self._manual_view(message.value)

    # --- view --------------------------------------------------------------------------------------------------

    def _manual_view(self, view: int) -> None:
        if self.history is None:
            return
        view = self.history.clamp(view)
        self.follow = view == self.history.steps_done  # back at the newest step: follow a live run again
        self.showing_run = True
        self._set_view(view)

    def _set_view(self, view: int) -> None:
        if view == self.view_step:
            self._refresh()  # a reactive does not fire on an unchanged value; the content may still be new
        else:
            self.view_step = view

    def watch_view_step(self) -> None:
        self._refresh()

    def watch_colour_mode(self) -> None:
        self._refresh()

    def _refresh(self) -> None:
        code = self.query_one(CodeView)
        if self.showing_run and self.history is not None:
            pieces = run_pieces(
                self.history,
                self.view_step,
                self.colour_mode,
                self.runner.token_text,
                self.run_settings.options.alg,
            )
            code.set_lines(document_lines(pieces, self.lexer), "run")
        else:
            code.set_lines(
                document_lines(source_pieces(self.source, self.settings.hole_width), self.lexer), "edit"
            )
        self._refresh_chrome()

    def _refresh_chrome(self) -> None:
        legend = self.query_one(Legend)
        legend.mode = self.colour_mode
        legend.total_steps = self.history.total_steps if self.history else 0
        legend.certainty_span = (
            certainty_range(self.history, self.run_settings.options.alg) if self.history else None
        )
        scrubber = self.query_one(Scrubber)
        h = self.history
        scrubber.maximum = max(h.total_steps, h.steps_done) if h else 0
        scrubber.recorded = h.steps_done if h else 0
        scrubber.value = h.clamp(self.view_step) if h else 0
        self._refresh_panel()
        # The footer recomposes on every bindings refresh: only ask when what is available changed.
        available = (self.running, bool(h and h.steps_done))
        if available != self._available:
            self._available = available
            self.refresh_bindings()

    def _status(self) -> str:
        if self.load_error:
            return "model failed to load"
        if self.pending_run:
            return "loading model… (the fill starts after)"
        if self.cancelling:
            return "cancelling…"
        if self.running:
            return "running" if self.history else ("loading model…" if self.info is None else "first step…")
        if self.history is None:
            return "idle: press f to fill"
        if self.showing_run and self.view_step < self.history.steps_done:
            return f"{self.history.status} (replay)"
        return self.history.status

    def _refresh_panel(self) -> None:
        h, v = self.history, self.view_step
        holes = self.source.count(MARKER)
        state = PanelState(
            model=self.info.name if self.info else ("failed" if self.load_error else "loading…"),
            device=f"{self.info.device} · {self.info.dtype}" if self.info else "",
            note=self.info.note if self.info else "",
            status=self._status(),
            step=h.clamp(v) if h else 0,
            total_steps=h.total_steps if h else 0,
            hole_tokens=h.hole_tokens if h else holes * self.settings.hole_width,
            holes=len(h.canvas.hole_spans) if h else holes,
            revealed=h.revealed_at(v) if h else 0,
            tokens_per_step=h.tokens_per_step(v) if h else None,
            elapsed=h.elapsed_at(v) if h else None,
            ar={k: h.ar_ness(v, k) for k in AR_KS} if h else {},
            settings=self.settings.rows(),
            colour_mode=self.colour_mode,
        )
        self.query_one(SidePanel).show(state)
