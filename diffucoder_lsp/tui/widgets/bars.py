"""The two one-line strips under the code view: the colour legend and the replay scrubber.

**Legend.** Without it the colours are decoration; with it a viewer reads "the purple tokens came first". It
shows the scale of the current colouring mode as a row of swatches with its ends labelled, plus the masked
placeholder.

**Scrubber.** Which step of the denoising history is on screen, and a track to scrub through it. Textual has no
slider, and the demo needs exactly one: an integer from 0 (all masked) to the number of steps recorded.
Clicking or dragging on the track posts :class:`Scrubber.Changed`; the screen owns the value (it also moves with
the replay keys and with a live run) and sets it back here, so there is one source of truth. During a live run
the track spans the planned steps, like a video player's buffer bar: the part already computed (``recorded``)
is drawn brighter than the part still to come, and the handle cannot pass it.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from ..render import CUT_STYLE, MASKED_STYLE, PLACEHOLDER, STOP_GLYPH, legend_cells

SWATCHES = 24


class Legend(Widget):
    """One line: ``reveal step  1 ▇▇▇…▇ N  ░ masked  ⌀ end  struck the editor cuts``, or in heat mode the run's certainty range:
    every glyph the code view draws is explained here."""

    DEFAULT_CSS = """
    Legend {
        height: 1;
        padding: 0 1;
        color: $text-muted;
    }
    """

    mode: reactive[str] = reactive("step")
    total_steps: reactive[int] = reactive(0)
    certainty_span: reactive[tuple[float, float] | None] = reactive(None)  # the run's (lowest, highest)

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        if self.mode == "heat":
            low, high = (
                ("low", "high") if self.certainty_span is None else (f"{v:.3g}" for v in self.certainty_span)
            )
            out.append(f"confidence  {low} ")
            high = f" {high}"
        else:
            out.append("reveal step  1 ")
            high = f" {self.total_steps}" if self.total_steps else " last"
        for style in legend_cells(self.mode, SWATCHES):
            out.append(" ", style)
        out.append(high)
        out.append("   ")
        out.append(PLACEHOLDER, MASKED_STYLE)
        out.append(" masked  ")
        out.append(STOP_GLYPH)
        out.append(" end  ")
        out.append("struck", CUT_STYLE)
        out.append(" the editor cuts")
        return out


LABEL_WIDTH = 18


class Scrubber(Widget):
    """``step  12/48  ━━━━━━━━●──────────``; click or drag on the track to jump."""

    DEFAULT_CSS = """
    Scrubber {
        height: 1;
        padding: 0 1;
    }
    Scrubber > .scrubber--done {
        color: $accent;
    }
    Scrubber > .scrubber--recorded {
        color: $text-muted;
    }
    Scrubber > .scrubber--todo {
        color: $text-disabled;
    }
    Scrubber > .scrubber--handle {
        color: $text;
        text-style: bold;
    }
    """
    COMPONENT_CLASSES = {"scrubber--done", "scrubber--recorded", "scrubber--todo", "scrubber--handle"}

    value: reactive[int] = reactive(0)
    recorded: reactive[int] = reactive(0)  # steps computed so far: the handle's limit
    maximum: reactive[int] = reactive(0)  # steps planned: the track's scale

    class Changed(Message):
        """The user moved the handle to ``value``."""

        def __init__(self, value: int) -> None:
            super().__init__()
            self.value = value

    def _track_width(self) -> int:
        return max(1, self.content_size.width - LABEL_WIDTH)

    def _cell(self, step: int, width: int) -> int:
        return round(step / self.maximum * (width - 1)) if self.maximum else 0

    def render(self) -> Text:
        label = f"step {self.value:>4}/{self.maximum:<4}"
        out = Text(f"{label:<{LABEL_WIDTH}}", no_wrap=True)
        width = self._track_width()
        handle = self._cell(self.value, width)
        recorded = max(handle, self._cell(self.recorded, width))
        out.append("━" * handle, self.get_component_rich_style("scrubber--done"))
        out.append("●", self.get_component_rich_style("scrubber--handle"))
        out.append("━" * (recorded - handle), self.get_component_rich_style("scrubber--recorded"))
        out.append("─" * (width - recorded - 1), self.get_component_rich_style("scrubber--todo"))
        return out

    def _value_at(self, x: int) -> int | None:
        offset = x - LABEL_WIDTH
        width = self._track_width()
        if offset < 0 or not self.maximum:
            return None
        return min(self.recorded, round(min(offset, width - 1) / max(width - 1, 1) * self.maximum))

    def _jump(self, x: int) -> None:
        value = self._value_at(x)
        if value is not None and value != self.value:
            self.post_message(self.Changed(value))

    def on_mouse_down(self, event: events.MouseDown) -> None:
        self.capture_mouse()
        self._jump(event.get_content_offset_capture(self).x)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if event.button:
            self._jump(event.get_content_offset_capture(self).x)

    def on_mouse_up(self, event: events.MouseUp) -> None:
        self.release_mouse()
