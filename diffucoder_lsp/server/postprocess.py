"""Turn what the model wrote at the cursor into what the editor should insert.

Every completion tool trips over the same things, and a diffusion model (which sees the suffix) is not immune:

* **Single line or block.** Mid-line with code after the cursor: one line. At the end of a line or on an empty
  line: a block. (:func:`decide_mode`.)
* **Doubled closers.** The editor auto-inserted ``)`` and the model wrote its own: ``foo(a))``. When the rest
  of the line is only closers/punctuation the completion *replaces* it (a ``range`` in LSP), when the model
  rewrote exactly the rest of the line that copy is dropped, and when real code follows the cursor the
  completion stops at its first unmatched closer (the code on the right already closes the bracket).
* **Suffix duplication.** A block that ends by repeating the next line of the file is cut before the repeat.
* **Indentation.** Tabs vs spaces follow the document; a first line that re-indents an already indented cursor
  is de-indented; a block stops when it dedents out of the cursor's scope (the model rambling into the next
  function).
* **Trailing blank lines** and trailing spaces are dropped; line endings follow the document (``\\r\\n``).

Everything here is pure string work on the document text, so it is tested with golden files.
"""

from __future__ import annotations

from dataclasses import dataclass

SINGLE, MULTI = "single", "multi"
OPENERS, CLOSERS = "([{", ")]}"
PAIR = {")": "(", "]": "[", "}": "{"}
QUOTES = "\"'`"
CLOSERISH = set(CLOSERS + QUOTES + ";:,. \t")
BLOCK_OPENERS = (":", "{", "(", "[")
CONTINUATIONS = ("else", "elif", "except", "finally", "catch")
TAB = 4


@dataclass(frozen=True)
class Completion:
    text: str  # inserted at the cursor, with the document's line endings
    replace: int = 0  # code points after the cursor (on its line) that ``text`` replaces


def decide_mode(line_prefix: str, line_suffix: str) -> str:
    """Single line when there is code after the cursor on its line, a block otherwise."""
    return SINGLE if line_suffix.strip() else MULTI


def split_at_cursor(prefix: str, suffix: str) -> tuple[str, str, str]:
    """(text of the cursor line before the cursor, after it, the lines after the cursor line)."""
    line_prefix = prefix[prefix.rfind("\n") + 1 :]
    nl = suffix.find("\n")
    line_suffix = suffix if nl < 0 else suffix[:nl]
    rest = "" if nl < 0 else suffix[nl + 1 :]
    return line_prefix, line_suffix.rstrip("\r"), rest


def postprocess(fill: str, prefix: str, suffix: str, mode: str | None = None) -> Completion | None:
    """The edit to offer for ``fill`` written between ``prefix`` and ``suffix``, or None when nothing is left."""
    crlf = "\r\n" in prefix[-4000:] or "\r\n" in suffix[:4000]
    fill = fill.replace("\r\n", "\n").replace("\r", "\n")
    prefix = prefix.replace("\r\n", "\n")
    suffix = suffix.replace("\r\n", "\n")
    line_prefix, line_suffix, rest = split_at_cursor(prefix, suffix)
    mode = mode or decide_mode(line_prefix, line_suffix)
    if mode == SINGLE:
        text, replace = _single_line(fill.split("\n", 1)[0], line_prefix, line_suffix)
    else:
        fill = fix_indent_style(fill, prefix[-4000:] + suffix[:4000])
        fill = fix_first_line_indent(fill, line_prefix, prefix[: len(prefix) - len(line_prefix)])
        fill = limit_scope(fill, line_prefix)
        fill = drop_suffix_duplicate(fill, line_prefix, rest if not line_suffix.strip() else suffix)
        text, replace = fill.rstrip(), 0
        if line_suffix.strip():  # a block forced mid-line: the rest of the line still applies
            text, replace = _single_line(text, line_prefix, line_suffix) if "\n" not in text else (text, 0)
    if not text.strip():
        return None
    if crlf:
        text = text.replace("\n", "\r\n")
    return Completion(text=text, replace=replace)


def settled(fill: str, prefix: str, suffix: str) -> bool:
    """True when :func:`postprocess` would cut ``fill`` inside what is already written, whatever follows it:
    a single-line completion that reached a line break, a block that left the cursor's scope (a dedent whose
    first word is written) or repeated the document's next line. The engine stops denoising such a hole: the
    steps after it would only write text the editor cuts (``a + b`` then a dedented ``def`` ends a
    ``return`` block after a few steps instead of 48).

    The text :func:`postprocess` then gets is ``fill`` (what was revealed up to the first masked position), and
    its cut is the same as for any longer text that starts with ``fill``: the lines before the cut are complete
    and the deciding line's first word is written (``el`` could still become ``elif``, which continues a block).
    """
    fill = fill.replace("\r\n", "\n").replace("\r", "\n")
    prefix = prefix.replace("\r\n", "\n")
    suffix = suffix.replace("\r\n", "\n")
    line_prefix, line_suffix, rest = split_at_cursor(prefix, suffix)
    if decide_mode(line_prefix, line_suffix) == SINGLE:
        return "\n" in fill
    lines = fill.split("\n")
    if len(lines) < 2:
        return False
    if not _first_word_written(lines[-1]):
        lines[-1] = ""  # not yet a deciding line
    text = fix_indent_style("\n".join(lines), prefix[-4000:] + suffix[:4000])
    text = fix_first_line_indent(text, line_prefix, prefix[: len(prefix) - len(line_prefix)])
    whole = text.rfind("\n")  # text[:whole] is complete lines
    if len(limit_scope(text, line_prefix)) <= whole:
        return True
    return len(drop_suffix_duplicate(text[:whole], line_prefix, rest)) < whole


def trim_settled(fill: str) -> str:
    """A settled fill without its last, unfinished line (the one whose first word decided the cut): what a
    completion cache may offer again after the user types part of it, with the same edit at the cursor."""
    end = max(fill.rfind("\n"), fill.rfind("\r"))
    return fill if end < 0 else fill[: end + 1]


def _first_word_written(line: str) -> bool:
    """The line's first word is complete: something that is not part of it follows (``def `` yes, ``el`` no),
    or it starts with a symbol (``)``)."""
    body = line.lstrip(" \t")
    if not body:
        return False
    if not (body[0].isalnum() or body[0] == "_"):
        return True
    return any(not (ch.isalnum() or ch == "_") for ch in body)


# --- one line -------------------------------------------------------------------------------------------------


def open_quote(text: str) -> str | None:
    """The quote character of a string left open at the end of ``text`` (one line), if any."""
    quote = None
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quote:
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in QUOTES:
            quote = ch
        elif ch == "#" and quote is None:
            break  # a Python comment: nothing after it opens a string
    return quote


def excess_closers(fill: str, line_prefix: str) -> list[int]:
    """Indices in ``fill`` of closers that close something opened before the cursor (brackets, or the quote of
    a string the cursor is in). Brackets inside strings are ignored."""
    outer = open_quote(line_prefix)
    stack: list[str] = []
    inner: str | None = None
    escaped = False
    out: list[int] = []
    for i, ch in enumerate(fill):
        if escaped:
            escaped = False
            continue
        if ch == "\\" and (outer or inner):
            escaped = True
            continue
        if outer:
            if ch == outer:
                out.append(i)
                outer = None
            continue
        if inner:
            if ch == inner:
                inner = None
            continue
        if ch in QUOTES:
            inner = ch
        elif ch in OPENERS:
            stack.append(ch)
        elif ch in CLOSERS:
            if stack:
                stack.pop()
            else:
                out.append(i)
    return out


def _closer_count(text: str, quote: str | None) -> int:
    return sum(1 for ch in text if ch in CLOSERS or (quote is not None and ch == quote))


def _single_line(fill: str, line_prefix: str, line_suffix: str) -> tuple[str, int]:
    rest = line_suffix.rstrip()
    if line_prefix[-1:] in (" ", "\t") and fill[:1] in (" ", "\t"):
        fill = fill.lstrip(" \t")  # "return |" + " x" would double the space
    if not rest:
        return fill.rstrip(), 0
    if rest[0] in CLOSERISH or rest[0].isspace():
        fill = fill.rstrip()
    excess = excess_closers(fill, line_prefix)
    body = rest.strip()
    if excess and set(rest) <= CLOSERISH:
        # Only closers/punctuation after the cursor: usually the editor's auto-pairs.
        if fill.rstrip().endswith(body):
            return fill.rstrip()[: len(fill.rstrip()) - len(body)], 0
        if len(excess) >= _closer_count(rest, open_quote(line_prefix)) > 0:
            return fill, len(rest)  # the fill closes everything the rest did: replace the rest
        return fill[: excess[0]], 0  # the rest closes what the fill opened-and-not-closed
    if excess:
        fill = fill[: excess[0]]  # code follows: it closes the bracket
    if body and fill.endswith(body):
        fill = fill[: len(fill) - len(body)]  # the model rewrote the rest of the line
    return fill, 0


# --- blocks ---------------------------------------------------------------------------------------------------


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def width(indent: str) -> int:
    return len(indent.expandtabs(TAB))


def indent_style(text: str) -> tuple[str, int]:
    """("tab" | "space", unit width) the document's indented lines use (spaces of 4 when unsure)."""
    tabs = spaces = 0
    widths: list[int] = []
    for line in text.split("\n"):
        if line.startswith("\t"):
            tabs += 1
        elif line.startswith(" ") and line.strip():
            spaces += 1
            widths.append(len(line) - len(line.lstrip(" ")))
    if tabs > spaces:
        return "tab", TAB
    unit = min((w for w in widths if w >= 2), default=TAB)
    return "space", unit if unit in (2, 3, 4, 8) else TAB


def fix_indent_style(fill: str, around: str) -> str:
    """Re-indent the fill's lines (after the first) with the document's tabs or spaces."""
    if "\n" not in fill:
        return fill
    style, unit = indent_style(around)
    first, *lines = fill.split("\n")
    out = [first]
    for line in lines:
        ind = _indent_of(line)
        if style == "tab" and " " in ind:
            cols = width(ind)
            ind = "\t" * (cols // TAB) + " " * (cols % TAB)
        elif style == "space" and "\t" in ind:
            ind = ind.replace("\t", " " * unit)
        out.append(ind + line[len(_indent_of(line)) :])
    return "\n".join(out)


def expected_indent(before: str) -> int:
    """Indent width of a new line after ``before`` (text up to the cursor line): the last non-blank line's
    indent, one level deeper when it opens a block."""
    lines = [ln for ln in before.split("\n")[-50:] if ln.strip()]
    if not lines:
        return 0
    last = lines[-1]
    w = width(_indent_of(last))
    code = last.split("#", 1)[0].rstrip() if "#" in last else last.rstrip()
    if code.endswith(BLOCK_OPENERS):
        _, unit = indent_style("\n".join(lines))
        w += unit
    return w


def fix_first_line_indent(fill: str, line_prefix: str, before: str) -> str:
    """On an already indented empty cursor line, drop the extra indentation the model put on its first line."""
    if not line_prefix or line_prefix.strip():
        return fill
    lead = _indent_of(fill)
    if not lead:
        return fill
    target = max(expected_indent(before), width(line_prefix))
    while lead and width(line_prefix + lead) > target:
        lead = lead[1:]
    return lead + fill.lstrip(" \t")


def limit_scope(fill: str, line_prefix: str) -> str:
    """Stop the block where it leaves the cursor's scope (a dedent below the cursor line, or back to its level
    after a block the cursor line opened). A closing bracket line that ends the scope is kept."""
    lines = fill.split("\n")
    if len(lines) < 2:
        return fill
    cursor_line = line_prefix + lines[0]
    ref = width(_indent_of(cursor_line)) if cursor_line.strip() else width(line_prefix)
    code = cursor_line.split("#", 1)[0].rstrip()
    opens = code.endswith(BLOCK_OPENERS)
    for i in range(1, len(lines)):
        line = lines[i]
        text = line.strip()
        if not text:
            continue
        w = width(_indent_of(line))
        leaves = w < ref or (opens and w <= ref)
        if not leaves:
            continue
        if text[0] in CLOSERS:
            return "\n".join(lines[: i + 1])
        if opens and w == ref and text.split(" ", 1)[0].rstrip(":") in CONTINUATIONS:
            continue
        return "\n".join(lines[:i])
    return fill


def drop_suffix_duplicate(fill: str, line_prefix: str, after: str) -> str:
    """Cut the block before a line that repeats the next non-blank line of the document (same indentation)."""
    nxt = next((ln.rstrip("\r") for ln in after.split("\n", 50)[:50] if ln.strip()), None)
    if nxt is None:
        return fill
    lines = fill.split("\n")
    for i, line in enumerate(lines):
        full = line_prefix + line if i == 0 else line
        if i == 0 and line_prefix.strip():
            continue  # the first line continues code already on the cursor line
        if full.rstrip() == nxt.rstrip():
            return "\n".join(lines[:i])
    return fill


def edited_text(segments: list[str], fills: list[str]) -> tuple[str, list[str]]:
    """A file with each hole's fill cut as the editor cuts a completion at that place, and the hole texts as
    shown. ``segments`` are the file's text around the holes (one more than ``fills``).

    One line for a hole written mid-line; for a block, stop where it dedents out of the hole's scope or starts
    repeating the line after the hole; doubled closers dropped. A model that writes past the end of what
    belongs in a hole (a small one often does) then still gives the line the user asked for. ``diffucoder
    fill`` and the HTTP backend's ``/v1/infill`` both print this unless asked for the raw fills."""
    out, shown = segments[0], []
    for i, fill in enumerate(fills):
        after = segments[i + 1]
        suffix = after + "".join(f + s for f, s in zip(fills[i + 1 :], segments[i + 2 :], strict=True))
        edit = postprocess(fill, out, suffix)
        piece, replace = ("", 0) if edit is None else (edit.text, edit.replace)
        shown.append(piece)
        out += piece + after[replace:]
    return out, shown
