"""Open documents: their text, version and language, and LSP positions in any negotiated encoding.

LSP positions are (line, character) where ``character`` counts code units of the negotiated position encoding:
UTF-16 (the default: a character outside the Basic Multilingual Plane, like most emoji, counts 2), UTF-8 (bytes:
CJK counts 3, emoji 4) or UTF-32 (code points). Python strings index code points, so every position that crosses
the protocol goes through :meth:`Document.offset_at` / :meth:`Document.position_at`.

Rules kept here, as the specification states them:

* ``\\n``, ``\\r\\n`` and ``\\r`` all end a line; a ``character`` past the end of its line means the end of the line
  (it never wraps onto the next line), a line past the end of the document means the end of the document.
* A ``character`` that falls inside a character's code units (half an emoji in UTF-16) is rounded down to the
  start of that character, so an edit never splits a character.

The store also decides which documents are too large or binary to complete in (a null character in the text).
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
ENCODINGS = (UTF8, UTF16, UTF32)
_EOL = re.compile(r"\r\n|\r|\n")


def char_units(ch: str, encoding: str) -> int:
    """Code units one character takes in ``encoding``."""
    cp = ord(ch)
    if encoding == UTF16:
        return 2 if cp > 0xFFFF else 1
    if encoding == UTF8:
        return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4
    return 1


def text_units(text: str, encoding: str) -> int:
    """Code units of a whole string (fast paths for the common cases)."""
    if encoding == UTF32 or text.isascii():
        return len(text)
    if encoding == UTF8:
        return len(text.encode("utf-8", "surrogatepass"))
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def column_to_index(line: str, column: int, encoding: str) -> int:
    """Code point index in ``line`` of a ``column`` in code units (clamped, rounded down inside a character)."""
    if column <= 0:
        return 0
    if encoding == UTF32 or line.isascii():
        return min(column, len(line))
    used = 0
    for i, ch in enumerate(line):
        used += char_units(ch, encoding)
        if used > column:
            return i
        if used == column:
            return i + 1
    return len(line)


@dataclass
class Document:
    uri: str
    text: str
    version: int | None = None
    language_id: str = ""
    # where the user was last seen working (code points): the end of the last ranged edit or the last completion
    # request; None until then. The server warms the context around it while the user pauses.
    cursor: int | None = None
    completed_version: int | None = None  # the version a completion last ran for (the context is warm there)
    _starts: list[int] | None = field(default=None, repr=False)

    # --- lines ----------------------------------------------------------------------------------------------

    @property
    def line_starts(self) -> list[int]:
        """Code point offset where each line begins (line 0 at 0)."""
        if self._starts is None:
            self._starts = [0, *(m.end() for m in _EOL.finditer(self.text))]
        return self._starts

    @property
    def line_count(self) -> int:
        return len(self.line_starts)

    def line_span(self, line: int) -> tuple[int, int]:
        """[start, end) of a line's content, without its line ending."""
        starts = self.line_starts
        start = starts[line]
        if line + 1 < len(starts):
            end = starts[line + 1]
            end -= 2 if self.text.startswith("\r\n", end - 2) and end - 2 >= start else 1
            return start, end
        return start, len(self.text)

    def line_text(self, line: int) -> str:
        start, end = self.line_span(line)
        return self.text[start:end]

    @property
    def eol(self) -> str:
        """The line ending the document uses (the first one found; ``\\n`` when there is none)."""
        m = _EOL.search(self.text)
        return m.group(0) if m else "\n"

    # --- positions ------------------------------------------------------------------------------------------

    def offset_at(self, line: int, character: int, encoding: str = UTF16) -> int:
        """Code point offset of an LSP position."""
        if line < 0:
            return 0
        if line >= self.line_count:
            return len(self.text)
        start, end = self.line_span(line)
        return start + column_to_index(self.text[start:end], character, encoding)

    def position_at(self, offset: int, encoding: str = UTF16) -> tuple[int, int]:
        """LSP (line, character) of a code point offset (clamped to the document)."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.line_starts, offset) - 1
        start, end = self.line_span(line)
        offset = min(offset, end)  # an offset inside a \r\n pair belongs to the end of the line
        return line, text_units(self.text[start:offset], encoding)

    # --- edits ----------------------------------------------------------------------------------------------

    def apply_change(
        self,
        text: str,
        start: tuple[int, int] | None = None,
        end: tuple[int, int] | None = None,
        encoding: str = UTF16,
    ) -> None:
        """Apply one content change: a full replacement (no range) or a ranged (incremental) edit."""
        if start is None or end is None:
            self.text = text
            if self.cursor is not None:
                self.cursor = min(self.cursor, len(text))
        else:
            a = self.offset_at(*start, encoding)
            b = self.offset_at(*end, encoding)
            if b < a:
                a, b = b, a
            self.text = self.text[:a] + text + self.text[b:]
            self.cursor = a + len(text)
        self._starts = None

    def skip_reason(self, max_chars: int) -> str | None:
        """Why completions are not offered in this document, or None."""
        if len(self.text) > max_chars:
            return f"{len(self.text)} characters (more than maxDocumentChars={max_chars})"
        if "\x00" in self.text:
            return "binary content (a null character)"
        return None


class DocumentStore:
    """The documents the client has open, by URI."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self._skip_logged: set[tuple[str, str]] = set()

    def open(self, uri: str, text: str, version: int | None, language_id: str = "") -> Document:
        doc = Document(uri=uri, text=text, version=version, language_id=language_id or "")
        self._docs[uri] = doc
        return doc

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def close(self, uri: str) -> None:
        self._docs.pop(uri, None)
        self._skip_logged = {k for k in self._skip_logged if k[0] != uri}

    def __contains__(self, uri: str) -> bool:
        return uri in self._docs

    def __len__(self) -> int:
        return len(self._docs)

    def version(self, uri: str) -> int | None:
        doc = self._docs.get(uri)
        return None if doc is None else doc.version

    def should_skip(self, doc: Document, max_chars: int) -> str | None:
        """The skip reason, logged once per document and reason."""
        reason = doc.skip_reason(max_chars)
        if reason is not None:
            key = (doc.uri, "binary" if "binary" in reason else "large")
            if key not in self._skip_logged:
                self._skip_logged.add(key)
                log.warning("skipping %s: %s", doc.uri, reason)
        return reason
