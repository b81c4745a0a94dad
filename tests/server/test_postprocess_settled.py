"""``settled``: the engine stops a hole once what is written decides the editor's cut, so it must never say so
before the cut is final: for every text that starts with a settled prefix, postprocess gives the same edit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from diffucoder_lsp.server.postprocess import postprocess, settled, trim_settled

SITES = [
    # (prefix, suffix): a block at the end of a return line, in an if body, after a block opener, mid-line
    ("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"),
    ("def f(x):\n    if x:\n        ", "\n    return 0\n"),
    (
        "class A:\n    def __init__(self, x, y):\n        self.x = x\n",
        "\n    def norm(self):\n        pass\n",
    ),
    ("def g(items):\n    for item in items:", "\n    return None\n"),
    ("x = foo(a, ", ")\n"),
    ("def h():\n\treturn ", "\n"),
    ("data = {\n    'a': 1,\n    ", "\n}\n"),
    ("try:\n    run()\n", "\nexcept ValueError:\n    pass\n"),
    ("def k(x):\n    a = 1\n    ", "\n    return 0\n"),
]

PIECES = [
    "a + b",
    "\n",
    "\n\n",
    "    ",
    "        ",
    "\t",
    "def ",
    "add_b(a, b):",
    "el",
    "\n    el",
    "\n        x = 1",
    " + 1",
    "if",
    "se:",
    "return 0",
    "return 1",
    "self.y = y",
    "    def norm(self):",
    "pass",
    ")",
    "}",
    "x",
    " ",
    "except ValueError:",
    "# note",
    "'b': 2,",
    "\r\n",
]


@settings(max_examples=1500, deadline=None)
@given(
    site=st.sampled_from(SITES),
    pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=12),
)
def test_a_settled_prefix_is_cut_as_every_longer_text_is(site, pieces):
    prefix, suffix = site
    fill = "".join(pieces)
    final = postprocess(fill, prefix, suffix)
    for k in range(1, len(fill) + 1):
        if settled(fill[:k], prefix, suffix):
            assert postprocess(fill[:k], prefix, suffix) == final, (fill[:k], fill)
            assert postprocess(trim_settled(fill[:k]), prefix, suffix) == final, (fill[:k], fill)
            break


def test_a_block_settles_at_the_first_word_of_the_dedented_line():
    prefix, suffix = SITES[0]
    assert not settled("a + b", prefix, suffix)
    assert not settled("a + b\n\n", prefix, suffix)
    assert not settled("a + b\n\nde", prefix, suffix)  # could be a deeper line still? its first word decides
    assert settled("a + b\n\ndef ", prefix, suffix)
    assert postprocess("a + b\n\ndef ", prefix, suffix).text == "a + b"


def test_a_continuation_keyword_is_waited_for():
    prefix = "def g(x):\n    if x:"
    suffix = "\n    return 0\n"
    assert not settled(
        "\n        y = 1\n    el", prefix, suffix
    )  # elif/else continue the block the line opened
    assert not settled("\n        y = 1\n    else:", prefix, suffix)
    assert settled("\n        y = 1\n    return ", prefix, suffix)


def test_a_repeat_of_the_next_line_settles_only_when_complete():
    prefix, suffix = "def f():\n    a = 1\n    ", "\n    return a\n"
    assert not settled("b = 2\n    return a", prefix, suffix)  # could still become "return a + b"
    assert settled("b = 2\n    return a\n", prefix, suffix)
    assert postprocess("b = 2\n    return a\n", prefix, suffix).text == "b = 2"


def test_a_single_line_settles_at_its_line_break():
    prefix, suffix = SITES[4]
    assert not settled("b", prefix, suffix)
    assert settled("b)\n", prefix, suffix)
