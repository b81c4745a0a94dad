"""Fill All Holes and Regenerate Selection keep the indentation of what they replace (issue: newcomer stumbles,
item 6), on an in-process server whose engine returns scripted fills."""

from __future__ import annotations

import pytest
from lsprotocol import types

from diffucoder_lsp.server import actions
from diffucoder_lsp.server.actions import reindent
from diffucoder_lsp.server.app import build_server
from diffucoder_lsp.server.engine_client import READY, Fill


@pytest.fixture
def server():
    ls = build_server()
    ls.apply_settings({"warmContext": False, "speculate": False}, initial=True)
    ls.engine.state = READY
    ls.engine.lm = object()  # ready; the scripted infill below never reads it
    ls.show = lambda *a: None
    ls.client_supports = lambda path: False
    ls.applied = []

    async def apply(params):
        ls.applied.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    ls.workspace_apply_edit_async = apply
    yield ls
    ls.scheduler.shutdown()


def script(ls, *texts):
    ls.engine.infill = lambda text, lengths, **kw: Fill(list(texts), 1, 1.0)
    ls.engine.count_tokens = lambda text: len(text) // 4


def new_texts(ls) -> list[str]:
    (params,) = ls.applied
    return [e.new_text for e in params.edit.changes[next(iter(params.edit.changes))]]


def test_reindent_moves_the_whole_block_to_the_selection_indent():
    assert reindent("    x = 1\n    if x:\n        y = 2\n", "            a = 0\n") == (
        "            x = 1\n            if x:\n                y = 2\n"
    )
    assert reindent("x = 1", "    old()") == "    x = 1"
    assert reindent("    same", "    old") == "    same"


async def test_a_hole_fill_keeps_the_block_and_stops_at_its_scope(server):
    uri = "file:///holes.py"
    server.documents.open(uri, "def f(x):\n    if x:\n        <|mask|>\n    return x\n", 1, "python")
    script(server, "    y = 1\n        z = 2\n\ndef g():\n    pass\n")
    await actions.fill_holes(server, uri)
    (text,) = new_texts(server)
    assert text == "y = 1\n        z = 2"  # the hole already sits at the block's indent; no next function


async def test_a_regenerated_deep_line_keeps_its_indentation(server):
    uri = "file:///regen.py"
    text = "class A:\n    def f(self):\n        if True:\n            old_call(1)\n        return 0\n"
    server.documents.open(uri, text, 1, "python")
    script(server, "    new_call(2)\n")
    rng = {"start": {"line": 3, "character": 0}, "end": {"line": 4, "character": 0}}
    await actions.regenerate_selection(server, uri, rng)
    (new,) = new_texts(server)
    assert new == "            new_call(2)\n"
