"""Documents: LSP positions in utf-8/16/32 against a reference built from encoded prefixes, line endings,
clamping, incremental changes, and skip rules."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from diffucoder_lsp.server.documents import UTF8, UTF16, UTF32, Document, DocumentStore, text_units

CODECS = {UTF8: "utf-8", UTF16: "utf-16-le", UTF32: "utf-32-le"}
WIDTH = {UTF8: 1, UTF16: 2, UTF32: 4}
ALPHABET = st.sampled_from(list("ab \t(") + ["é", "日", "本", "😀", "🎉", "\n", "\r\n", "\r"])


def reference_position(text: str, offset: int, encoding: str) -> tuple[int, int]:
    """Split on every kind of line ending, count the encoded units of the line up to ``offset``."""
    line, start, i = 0, 0, 0
    while i < offset:
        if text[i] == "\r" and i + 1 < len(text) and text[i + 1] == "\n":
            if i + 1 >= offset:
                break
            i += 2
        elif text[i] in "\r\n":
            i += 1
        else:
            i += 1
            continue
        line, start = line + 1, i
    units = len(text[start:offset].encode(CODECS[encoding])) // WIDTH[encoding]
    return line, units


@settings(max_examples=150, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join), st.data(), st.sampled_from([UTF8, UTF16, UTF32]))
def test_positions_round_trip_against_reference(text, data, encoding):
    doc = Document("file:///t", text)
    offset = data.draw(st.integers(0, len(text)))
    if offset > 0 and text[offset - 1 : offset + 1] == "\r\n":
        offset -= 1  # inside a CRLF pair is not a position of its own
    pos = doc.position_at(offset, encoding)
    assert pos == reference_position(text, offset, encoding)
    assert doc.offset_at(*pos, encoding) == offset


def test_utf16_counts_astral_characters_twice():
    doc = Document("file:///t", 'x = "😀日本" + y\n')
    assert doc.position_at(doc.text.index("+"), UTF16) == (0, 11)
    assert doc.position_at(doc.text.index("+"), UTF8) == (0, 17)
    assert doc.position_at(doc.text.index("+"), UTF32) == (0, 10)
    assert doc.offset_at(0, 11, UTF16) == doc.text.index("+")


def test_column_inside_a_character_rounds_down_and_past_the_end_clamps():
    doc = Document("file:///t", "a😀b\nsecond\n")
    assert doc.offset_at(0, 2, UTF16) == 1  # half of the emoji -> before it
    assert doc.offset_at(0, 3, UTF8) == 1  # inside its 4 bytes
    assert doc.offset_at(0, 99, UTF16) == 3  # end of line 0, not into line 1
    assert doc.offset_at(9, 0, UTF16) == len(doc.text)
    assert doc.line_text(1) == "second"


def test_line_endings_of_all_kinds():
    doc = Document("file:///t", "a\r\nb\rc\nd")
    assert [doc.line_text(i) for i in range(doc.line_count)] == ["a", "b", "c", "d"]
    assert doc.eol == "\r\n"
    assert doc.position_at(2) == (0, 1)  # between \r and \n: end of line 0


def test_incremental_changes_in_each_encoding():
    for encoding in (UTF8, UTF16, UTF32):
        doc = Document("file:///t", "s = '😀'\nx = 1\n")
        quote = text_units("s = '😀", encoding)
        doc.apply_change("日本", (0, quote), (0, quote), encoding)
        assert doc.text == "s = '😀日本'\nx = 1\n"
        doc.apply_change("", (0, 4), (1, 0), encoding)
        assert doc.text == "s = x = 1\n"
        doc.apply_change("whole\n")
        assert doc.text == "whole\n" and doc.line_count == 2


def test_skip_rules_and_store():
    store = DocumentStore()
    big = store.open("file:///big", "x" * 101, 1)
    blob = store.open("file:///blob", "a\x00b", 1, "python")
    ok = store.open("file:///ok", "fine", 3, "python")
    assert "more than" in store.should_skip(big, 100)
    assert "binary" in store.should_skip(blob, 100)
    assert store.should_skip(ok, 100) is None
    assert store.version("file:///ok") == 3 and len(store) == 3
    store.close("file:///ok")
    assert "file:///ok" not in store and store.get("file:///ok") is None
