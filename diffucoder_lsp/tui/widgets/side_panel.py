"""The side panel: what ran (model, device, settings) and what the run did (steps, speed, AR-ness).

The AR-ness lines are the point of the demo: they put a number on how far from left to right the model
decoded (1.0 = strictly left to right; see :mod:`diffucoder_lsp.analysis`). They are computed for the moment
on screen, so scrubbing back through a run shows how the order developed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

BAR_WIDTH = 10
AR_KS = (1, 3)


@dataclass(frozen=True)
class PanelState:
    """Everything the panel shows; the screen rebuilds it on every change (it is cheap)."""

    model: str = "loading…"
    device: str = ""
    note: str = ""
    status: str = "idle"
    step: int = 0
    total_steps: int = 0
    hole_tokens: int = 0
    holes: int = 0
    revealed: int = 0
    tokens_per_step: float | None = None
    elapsed: float | None = None
    ar: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)  # k -> (local, global)
    settings: tuple[tuple[str, str], ...] = ()  # (name, value) rows
    colour_mode: str = "step"


def _bar(value: float | None) -> Text:
    if value is None:
        return Text("–", style="dim")
    filled = round(value * BAR_WIDTH)
    out = Text("█" * filled, style="#21918c")
    out.append("░" * (BAR_WIDTH - filled), style="#3a3a3a")
    out.append(f" {value:.2f}")
    return out


class SidePanel(Static):
    """Model, run and AR-ness summary, as a two-column grid."""

    DEFAULT_CSS = """
    SidePanel {
        width: 38;
        height: 1fr;
        padding: 0 1;
        border: round $secondary 50%;
        border-title-color: $text-muted;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "run"
        self.state = PanelState()

    def on_mount(self) -> None:
        self.show(self.state)

    def show(self, state: PanelState) -> None:
        self.state = state
        # Its size is fixed by its CSS (a column 38 wide, the body's height), so new numbers need a repaint, not
        # a layout pass: a layout pass redraws the whole screen, which during a live run on a 2-core CPU took
        # time from the model's steps.
        self.update(self._render_state(state), layout=False)

    @staticmethod
    def _render_state(s: PanelState) -> Group:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_row("model", Text(s.model, style="bold"))
        if s.device:
            grid.add_row("device", s.device)
        grid.add_row("status", s.status)
        total = str(s.total_steps) if s.total_steps else "?"
        grid.add_row("step", f"{s.step} / {total}")
        holes = "hole" if s.holes == 1 else "holes"
        grid.add_row("tokens", f"{s.revealed} / {s.hole_tokens} in {s.holes} {holes}")
        grid.add_row("tok/step", "–" if s.tokens_per_step is None else f"{s.tokens_per_step:.2f}")
        grid.add_row("elapsed", "–" if s.elapsed is None else f"{s.elapsed:.2f} s")
        ar = Table.grid(padding=(0, 1))
        ar.add_column(style="dim", no_wrap=True)
        ar.add_column(no_wrap=True)
        for k in AR_KS:
            local, glob = s.ar.get(k, (None, None))
            ar.add_row(f"local@{k}", _bar(local))
            ar.add_row(f"global@{k}", _bar(glob))
        parts: list = [grid, Text(""), Text("AR-ness (1 = left to right)", style="bold"), ar]
        settings = Table.grid(padding=(0, 1))
        settings.add_column(style="dim", no_wrap=True)
        settings.add_column(overflow="fold")
        for name, value in s.settings:
            settings.add_row(name, value)
        settings.add_row("colour", "confidence" if s.colour_mode == "heat" else "reveal step")
        parts += [Text(""), Text("settings (s)", style="bold"), settings]
        if s.note:
            parts += [Text(""), Text(s.note, style="italic yellow", overflow="fold")]
        return Group(*parts)
