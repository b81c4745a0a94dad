"""The settings dialog: algorithm, temperature, steps and hole length, changed without leaving the app.

The point of the demo is to compare runs (a higher temperature lowers AR-ness; ``origin`` decodes in random
order), so these must be one key away. Values are validated by building the real
:class:`~diffucoder_lsp.engine.sampler.SamplingOptions`, so the dialog accepts exactly what the engine accepts
and shows the engine's own message otherwise. It returns new :class:`DemoSettings` (or None when cancelled).
"""

from __future__ import annotations

import dataclasses

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from ...engine.canvas import MAX_HOLE_TOKENS
from ...engine.options import ALGORITHMS
from ...errors import BadInputError
from ..runner import DemoSettings


def parse_auto_int(value: str, what: str, *, low: int = 1, high: int | None = None) -> int | None:
    """'' or 'auto' -> None, else an int within [low, high]; BadInputError with a readable message otherwise."""
    value = value.strip().lower()
    if value in ("", "auto"):
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadInputError(f"{what} must be a whole number or auto, got {value!r}") from None
    if n < low or (high is not None and n > high):
        limit = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadInputError(f"{what} must be {limit}, got {n}")
    return n


def settings_from_fields(
    base: DemoSettings, alg: str, temperature: str, steps: str, length: str
) -> DemoSettings:
    """New settings from the dialog's raw field values (raises BadInputError on a bad value)."""
    try:
        temp = float(temperature)
    except ValueError:
        raise BadInputError(f"temperature must be a number, got {temperature!r}") from None
    n_steps = parse_auto_int(steps, "steps")
    n_length = parse_auto_int(length, "length", high=MAX_HOLE_TOKENS)
    options = dataclasses.replace(base.options, alg=alg, temperature=temp, steps=n_steps)  # validates
    return DemoSettings(options=options, length="auto" if n_length is None else n_length)


class SettingsScreen(ModalScreen[DemoSettings | None]):
    """A modal form over the demo screen; enter applies, escape cancels."""

    DEFAULT_CSS = """
    SettingsScreen {
        align: center middle;
    }
    SettingsScreen > Vertical {
        width: 60;
        height: auto;
        padding: 1 2;
        border: thick $primary;
        background: $panel;
    }
    SettingsScreen Grid {
        grid-size: 2;
        grid-columns: 14 1fr;
        grid-rows: 1;
        grid-gutter: 1 0;
        height: auto;
        margin: 1 0 0 0;
    }
    SettingsScreen #error {
        color: $error;
        height: auto;
        margin: 1 0 0 0;
    }
    SettingsScreen #buttons {
        height: auto;
        align-horizontal: right;
        margin: 1 0 0 0;
    }
    SettingsScreen Button {
        margin: 0 0 0 2;
    }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "apply", "Apply")]

    def __init__(self, settings: DemoSettings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        o = self.settings.options
        with Vertical():
            yield Label("[b]Sampling settings[/b]  (steps/length: a number or auto)")
            with Grid():
                yield Label("algorithm")
                yield Select(
                    [(a, a) for a in ALGORITHMS], value=o.alg, allow_blank=False, compact=True, id="alg"
                )
                yield Label("temperature")
                yield Input(f"{o.temperature:g}", compact=True, id="temperature")
                yield Label("steps")
                yield Input("auto" if o.steps is None else str(o.steps), compact=True, id="steps")
                yield Label("length")
                yield Input(str(self.settings.length), compact=True, id="length")
            yield Label("", id="error")
            with Horizontal(id="buttons"):
                yield Button("Cancel", compact=True, id="cancel")
                yield Button("Apply", variant="primary", compact=True, id="apply")
            yield Label("[dim]ctrl+s apply   esc cancel   tab next field[/dim]", id="keys")

    def on_mount(self) -> None:
        self.query_one("#alg", Select).focus()  # not an Input: a blinking caret would make snapshots flaky

    def _collect(self) -> DemoSettings:
        alg = self.query_one("#alg", Select).value
        return settings_from_fields(
            self.settings,
            str(alg),
            self.query_one("#temperature", Input).value,
            self.query_one("#steps", Input).value,
            self.query_one("#length", Input).value,
        )

    def action_apply(self) -> None:
        try:
            settings = self._collect()
        except BadInputError as exc:
            self.query_one("#error", Label).update(str(exc))
            return
        self.dismiss(settings)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#apply")
    def _apply_pressed(self) -> None:
        self.action_apply()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_apply()
