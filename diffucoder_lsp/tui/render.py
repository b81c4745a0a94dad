"""What the code view draws: syntax-highlighted text with holes, coloured by reveal step or by confidence.

The document is assembled from *pieces*: context text (highlighted as code) and hole cells (one per mask token:
a placeholder while masked, the token's text once revealed). Highlighting runs over the whole document at once,
with every masked cell replaced by a space of the same length, so the lexer sees code around the holes and a
string or comment that spans a hole keeps its colour. Hole cells are then painted over with their own colours.

Colour scales are fixed, not themed: a colour must mean the same thing in the code and in the legend. The
reveal-step scale runs from deep purple (first step) to yellow (last step). The confidence scale runs from red
(least sure) to green (surest) over :func:`diffucoder_lsp.analysis.certainty`, stretched between the lowest and
highest certainty of the whole run (:func:`certainty_range`, which the legend prints): an absolute scale would
paint a weak model's run a single red, and the question the view answers is "which tokens was the model surer
of", within one run. The range covers every step, so colours do not shift while replaying.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.util import ClassNotFound
from rich.color import Color
from rich.style import Style
from rich.syntax import PygmentsSyntaxTheme
from rich.text import Text

from ..analysis import certainty
from .history import FillHistory

PLACEHOLDER = "░"
STOP_GLYPH = "⌀"  # an eos/pad token inside a hole: the model chose to end the span there
MARKER = "<|mask|>"
STEP_STOPS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")  # viridis: perceptually ordered
HEAT_STOPS = ("#d73027", "#fc8d59", "#fee08b", "#d9ef8b", "#1a9850")  # red (unsure) -> green (sure)
MASKED_STYLE = Style(color="#7a7a7a", bgcolor="#2b2b2b")
HOLE_STYLE = Style(color="#c678dd", bgcolor="#3a2a42")  # a marked hole before any run
CUT_STYLE = Style(strike=True, dim=True)  # written, but past where the editor would cut the hole
THEME = PygmentsSyntaxTheme("monokai")

ColourMode = str  # "step" or "heat"


def _mix(stops: Sequence[str], x: float) -> Color:
    """Linear interpolation along colour stops; ``x`` in [0, 1]."""
    x = min(1.0, max(0.0, x))
    scaled = x * (len(stops) - 1)
    i = min(int(scaled), len(stops) - 2)
    f = scaled - i
    a = Color.parse(stops[i]).get_truecolor()
    b = Color.parse(stops[i + 1]).get_truecolor()
    return Color.from_rgb(*(round(a[c] + (b[c] - a[c]) * f) for c in range(3)))


def _on(bg: Color) -> Style:
    """A cell style on background ``bg`` with whichever of black or white text reads better."""
    r, g, b = bg.get_truecolor()
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return Style(color="#000000" if luminance > 140 else "#ffffff", bgcolor=bg)


def step_style(step: int, total_steps: int) -> Style:
    """The colour of a token revealed at ``step`` (0-based) of a run of ``total_steps``."""
    x = step / (total_steps - 1) if total_steps > 1 else 1.0
    return _on(_mix(STEP_STOPS, x))


def heat_style(value: float) -> Style:
    """The colour of a token revealed with certainty ``value`` in [0, 1]."""
    return _on(_mix(HEAT_STOPS, value))


def legend_cells(mode: ColourMode, width: int) -> list[Style]:
    """``width`` swatches spanning the scale of ``mode`` from its low end to its high end."""
    n = max(1, width)
    xs = [i / (n - 1) if n > 1 else 1.0 for i in range(n)]
    return [_on(_mix(STEP_STOPS if mode == "step" else HEAT_STOPS, x)) for x in xs]


def lexer_name(filename: str | None, text: str) -> str:
    """Pygments lexer alias for a file name (Python when unknown: the demo's home language)."""
    if filename:
        try:
            return get_lexer_for_filename(filename, text).aliases[0]
        except ClassNotFound:
            pass
    return "python"


@dataclass(frozen=True)
class Piece:
    """A run of document text: context (``style`` None) or one hole cell with its overlay style."""

    text: str
    style: Style | None = None
    masked: bool = False


def _control_table() -> dict[int, str]:
    table = {c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A)}  # ␀ ␁ ... control pictures
    table[0x0D] = " "  # a CR before LF (Windows line ends) shows as nothing
    table[0x7F] = "␡"
    table.update({c: "\ufffd" for c in range(0x80, 0xA0)})
    return table


CONTROL_PICTURES = _control_table()


def visible(text: str) -> str:
    """``text`` with control characters made visible, one character for one (offsets stay valid).

    Model output is untrusted: a token decoding to an escape sequence must not reach the terminal as one.
    """
    return text.translate(CONTROL_PICTURES)


def highlight(pieces: Sequence[Piece], lexer: str) -> Text:
    """One Text of all pieces: code colours on context, overlay styles on hole cells."""
    pieces = [Piece(visible(p.text), p.style, p.masked) for p in pieces]
    plain = "".join(p.text for p in pieces)
    lexed = "".join(" " * len(p.text) if p.masked else p.text for p in pieces)
    out = Text(plain, no_wrap=True, end="")
    try:
        lex = get_lexer_by_name(lexer, stripnl=False, ensurenl=False, stripall=False)
    except ClassNotFound:
        lex = get_lexer_by_name("text", stripnl=False, ensurenl=False)
    offset = 0
    for ttype, value in lex.get_tokens(lexed):
        style = THEME.get_style_for_token(ttype)
        if value and style.color is not None:
            out.stylize(
                Style(color=style.color, bold=style.bold, italic=style.italic), offset, offset + len(value)
            )
        offset += len(value)
    offset = 0
    for p in pieces:
        if p.style is not None:
            out.stylize(p.style, offset, offset + len(p.text))
        offset += len(p.text)
    return out


def source_pieces(source: str, hole_width: int) -> list[Piece]:
    """The editable document: context, and each ``<|mask|>`` hole as ``hole_width`` placeholder cells."""
    parts = source.split(MARKER)
    pieces = [Piece(parts[0])]
    for part in parts[1:]:
        pieces.append(Piece(PLACEHOLDER * hole_width, HOLE_STYLE, masked=True))
        pieces.append(Piece(part))
    return [p for p in pieces if p.text]


def certainty_range(history: FillHistory, alg: str) -> tuple[float, float] | None:
    """Lowest and highest certainty of every token revealed in the run (None before the first reveal)."""
    values = [certainty(c, alg) for c in history.confidence if c is not None]
    return (min(values), max(values)) if values else None


def scaled(value: float, span: tuple[float, float] | None) -> float:
    """``value`` placed in [0, 1] within ``span``; the middle when the span is empty."""
    if span is None or span[1] - span[0] < 1e-9:
        return 0.5
    return (value - span[0]) / (span[1] - span[0])


def run_pieces(
    history: FillHistory,
    view: int,
    mode: ColourMode,
    token_text: Callable[[int], str],
    alg: str,
) -> list[Piece]:
    """The document as it stood after ``view`` steps of a run: revealed tokens coloured, the rest masked.

    A run of end tokens shows as one ``⌀`` (a hole that ended early has its whole remaining width ended); once
    the run is over, what the editor would cut of a hole (``history.kept``) is struck through."""
    canvas = history.canvas
    total = max(history.total_steps, 1)
    span = certainty_range(history, alg) if mode == "heat" else None
    pieces = [Piece(canvas.kept_prefix)]
    for j, hole in enumerate(history.holes_at(view)):
        pieces.append(Piece(canvas.segments[j]))
        kept = history.kept[j] if history.kept and j < len(history.kept) else None
        ended = False
        for i, cell in enumerate(hole):
            if cell.token is None:
                pieces.append(Piece(PLACEHOLDER, MASKED_STYLE, masked=True))
                ended = False
                continue
            text = token_text(cell.token) or "·"
            if text == STOP_GLYPH and ended:
                continue
            ended = text == STOP_GLYPH
            if mode == "heat":
                style = heat_style(scaled(certainty(cell.confidence or 0.0, alg), span))
            else:
                style = step_style(cell.step or 0, total)
            if kept is not None and i >= kept and not ended:
                style = style + CUT_STYLE
            pieces.append(Piece(text, style))
    pieces.append(Piece(canvas.segments[-1]))
    pieces.append(Piece(canvas.kept_suffix))
    return [p for p in pieces if p.text]


def document_lines(pieces: Sequence[Piece], lexer: str, tab_size: int = 4) -> list[Text]:
    """Highlighted lines, tabs expanded; always at least one line."""
    lines = highlight(pieces, lexer).split("\n", allow_blank=True)
    for line in lines:
        line.expand_tabs(tab_size)
    if lines and not lines[-1].plain and len(lines) > 1:
        lines.pop()  # the newline ending the file does not open a line of its own
    return list(lines) or [Text("")]
