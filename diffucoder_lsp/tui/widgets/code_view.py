"""The code view: a scrollable, line-numbered view of highlighted lines, with a cursor and a line selection.

It is a Line API widget (``ScrollView`` + ``render_line``): the screen hands it ready-made lines
(:mod:`diffucoder_lsp.tui.render`) for either the editable source or a moment of a run, and it only draws them,
so a denoising step costs one rebuild of the lines and a repaint of what is visible.

Selection is by whole lines (shift+up/down or shift+click): in code infilling the units people hide are lines
and blocks, and a line selection stays unambiguous in a terminal without a text cursor. The cursor and the
selection only exist in ``edit`` mode; in ``run`` mode up/down scroll.

Bindings are not inherited from ``ScrollView`` on purpose: its left/right/home/end scroll bindings would swallow
the replay keys the screen binds.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..render import MARKER


def mark_lines(text: str, first: int, last: int, marker: str = MARKER) -> str:
    """``text`` with lines ``first..last`` (0-based, inclusive) replaced by one hole; their final newline stays.

    Indentation is hidden too: the model writes the whole line, as in HumanEval-Infilling's line tasks.
    """
    lines = text.split("\n")
    if not 0 <= first <= last < len(lines):
        raise ValueError(f"lines {first}..{last} outside a text of {len(lines)} lines")
    return "\n".join([*lines[:first], marker, *lines[last + 1 :]])


class CodeView(ScrollView, can_focus=True, inherit_bindings=False):
    """Highlighted code with line numbers; in edit mode a cursor line and an optional line selection."""

    DEFAULT_CSS = """
    CodeView {
        background: $surface;
        scrollbar-size: 1 1;
        border: round $primary 50%;
        padding: 0 1;
    }
    CodeView:focus {
        border: round $primary;
    }
    CodeView > .code-view--gutter {
        color: $text-muted;
    }
    CodeView > .code-view--cursor {
        background: $boost;
    }
    CodeView > .code-view--selection {
        background: $primary 35%;
    }
    """
    COMPONENT_CLASSES = {"code-view--gutter", "code-view--cursor", "code-view--selection"}
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("shift+up", "select(-1)", "Select up", show=False),
        Binding("shift+down", "select(1)", "Select down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
    ]

    mode: reactive[str] = reactive("edit")
    cursor_line: reactive[int] = reactive(0)

    class CursorMoved(Message):
        """The cursor or selection changed (the screen may show the selected range)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._lines: list[Text] = [Text("")]
        self._width = 0
        self.anchor_line: int | None = None

    # --- content ------------------------------------------------------------------------------------------

    def set_lines(self, lines: list[Text], mode: str) -> None:
        """Show ``lines``; switching to edit mode keeps the cursor in range, run mode drops the selection.

        Only the lines that differ are repainted when the mode and the line count stay: a live step changes a
        hole's lines, and repainting the whole view each step took a 2-core CPU's time from the model."""
        old, old_mode = self._lines, self.mode
        self._lines = lines or [Text("")]
        self._width = max(line.cell_len for line in self._lines)
        self.mode = mode
        if mode != "edit":
            self.anchor_line = None
        self.cursor_line = min(self.cursor_line, len(self._lines) - 1)
        self.virtual_size = Size(self._width + self._gutter_width() + 1, len(self._lines))
        if mode == old_mode and len(old) == len(self._lines):
            for index, (before, after) in enumerate(zip(old, self._lines, strict=True)):
                if before != after:  # rich Text: same characters and same styles
                    self.refresh_lines(index)
        else:
            self.refresh()

    @property
    def line_count(self) -> int:
        return len(self._lines)

    @property
    def plain_lines(self) -> list[str]:
        """The text as shown (placeholders included), one string per line: what tests read back."""
        return [line.plain for line in self._lines]

    def line_text(self, y: int) -> Text:
        return self._lines[y]

    @property
    def selection(self) -> tuple[int, int]:
        """Selected lines (first, last), inclusive; the cursor line alone when nothing is selected."""
        a = self.cursor_line if self.anchor_line is None else self.anchor_line
        return min(a, self.cursor_line), max(a, self.cursor_line)

    # --- keys and mouse --------------------------------------------------------------------------------------

    def _move(self, line: int, extend: bool) -> None:
        if self.mode != "edit":
            self.scroll_to(y=self.scroll_y + (line - self.cursor_line), animate=False)
            return
        if extend and self.anchor_line is None:
            self.anchor_line = self.cursor_line
        elif not extend:
            self.anchor_line = None
        self.cursor_line = max(0, min(line, len(self._lines) - 1))
        self.scroll_to_region(Region(0, self.cursor_line, 1, 1), animate=False, immediate=True)
        self.refresh()
        self.post_message(self.CursorMoved())

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor_line + delta, extend=False)

    def action_select(self, delta: int) -> None:
        self._move(self.cursor_line + delta, extend=True)

    def action_page(self, delta: int) -> None:
        height = max(1, self.scrollable_content_region.height - 1)
        self._move(self.cursor_line + delta * height, extend=False)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:  # on the border or a scrollbar
            return
        line = int(self.scroll_y) + offset.y
        if 0 <= line < len(self._lines):
            self._move(line, extend=event.shift)

    # --- drawing -------------------------------------------------------------------------------------------

    def _gutter_width(self) -> int:
        return len(str(len(self._lines))) + 1

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        if index >= len(self._lines):
            return Strip.blank(width, base)
        gutter_w = self._gutter_width()
        line_style = Style()
        if self.mode == "edit":
            first, last = self.selection
            if self.anchor_line is not None and first <= index <= last:
                line_style = self.get_component_rich_style("code-view--selection")
            elif index == self.cursor_line:
                line_style = self.get_component_rich_style("code-view--cursor")
        gutter = Segment(
            f"{index + 1:>{gutter_w - 1}} ",
            base + self.get_component_rich_style("code-view--gutter", partial=True),
        )
        body = self._lines[index].copy()
        body.stylize_before(base + line_style)
        segments = list(body.render(self.app.console))
        strip = Strip(segments, body.cell_len).crop_extend(
            scroll_x, scroll_x + width - gutter_w, base + line_style
        )
        return Strip([gutter, *strip]).apply_offsets(scroll_x, index)

    def watch_cursor_line(self) -> None:
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
