"""Post-processing: golden files (a document with a cursor marker, what the model wrote, the expected insert
text and LSP range in UTF-16) plus unit checks of the pieces."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffucoder_lsp.server.documents import Document
from diffucoder_lsp.server.postprocess import (
    MULTI,
    SINGLE,
    decide_mode,
    excess_closers,
    expected_indent,
    indent_style,
    open_quote,
    postprocess,
)

GOLDEN = Path(__file__).parent / "golden"
CURSOR = "█"
NONE = "<none>"


def parse_golden(path: Path) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("--- "):
            current = line[4:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    # Each section ends with the newline before the next header (or the file's last newline): drop one.
    return {k: "\n".join(v[:-1]) if v and v[-1] == "" else "\n".join(v) for k, v in sections.items()}


CASES = sorted(GOLDEN.glob("*.txt"))


def test_there_are_golden_cases():
    assert len(CASES) >= 12


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path):
    case = parse_golden(path)
    document = case["document"]
    assert document.count(CURSOR) == 1, "exactly one cursor marker"
    at = document.index(CURSOR)
    text = document.replace(CURSOR, "")
    prefix, suffix = text[:at], text[at:]
    got = postprocess(case["model"], prefix, suffix)
    if case["insert"] == NONE:
        assert got is None
        return
    assert got is not None
    assert got.text == case["insert"]
    doc = Document("file:///golden", text)
    start = doc.position_at(at)
    end = doc.position_at(at + got.replace)
    assert f"{start[0]}:{start[1]}-{end[0]}:{end[1]}" == case["range"]


def test_mode_single_only_with_code_after_the_cursor():
    assert decide_mode("x = foo(", "a)") == SINGLE
    assert decide_mode("x = 1", "") == MULTI
    assert decide_mode("    ", "   ") == MULTI


def test_crlf_documents_get_crlf_completions():
    got = postprocess("x = 1\n    return x\n", "def f():\r\n    ", "\r\nprint(f())\r\n")
    assert got is not None and got.text == "x = 1\r\n    return x"


def test_open_quote_and_excess_closers():
    assert open_quote('print("abc') == '"'
    assert open_quote("print('a\\'b") == "'"
    assert open_quote('x = "a" + "b"') is None
    assert open_quote("x = 1  # it's") is None
    assert excess_closers("a, b))", "f(g(") == [4, 5]
    assert excess_closers("(x)]", "a[") == [3]
    assert excess_closers('x")', 'f("') == [1, 2]
    assert excess_closers("'(')", "f(") == [3]


def test_indentation_helpers():
    assert indent_style("a:\n\tb\n\tc\n") == ("tab", 4)
    assert indent_style("a:\n  b\n    c\n") == ("space", 2)
    assert expected_indent("def f():\n    if x:\n") == 8
    assert expected_indent("def f():\n    x = 1\n") == 4
    assert expected_indent("") == 0


def test_whitespace_only_fill_is_no_completion():
    assert postprocess("   \n\n", "x = 1\n", "\n") is None
    assert postprocess("", "foo(", ")") is None
