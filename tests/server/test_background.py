"""Warming the context while the user pauses, on an in-process server (no transport): after an open or an edit
the next completion starts from keys/values computed in the pause; requests preempt warming; switched off by
``warmContext: false``."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types

from diffucoder_lsp.server import background
from diffucoder_lsp.server.app import build_server
from diffucoder_lsp.server.engine_client import READY

URI = "file:///warm.py"
# > ContextStore.min_tokens tokens, < the default 512-token window
TEXT = "def add(a, b):\n    return a + b\n\n\n" * 18 + "def main():\n    total = add(1, 2)\n    return \n"


@pytest.fixture(scope="module")
def lm(tiny_ckpt):
    from diffucoder_lsp.model.loading import load_model

    return load_model(str(tiny_ckpt), device="cpu")


@pytest.fixture
def server(lm, monkeypatch):
    monkeypatch.setattr(background, "WARM_DELAY_S", 0.01)
    monkeypatch.setattr(background, "SPECULATE_DELAY_S", 0.01)
    ls = build_server()
    ls.apply_settings({"temperature": 0.0, "debounceMs": 0, "speculate": False}, initial=True)
    ls.engine.lm, ls.engine.state = lm, READY
    yield ls
    ls.scheduler.shutdown()


async def settle(ls) -> None:
    """Wait until every task the server spawned (warming) has finished."""
    while ls._tasks:
        await asyncio.gather(*list(ls._tasks), return_exceptions=True)


def end_of_text() -> types.Position:
    lines = TEXT.split("\n")
    return types.Position(line=len(lines) - 2, character=len(lines[-2]))


async def test_an_opened_document_is_warmed_and_the_first_completion_starts_from_it(server):
    doc = server.documents.open(URI, TEXT, 1, "python")
    background.warm_later(server, URI)
    await settle(server)
    store = server.engine.store_for(URI)
    assert store.entry is not None and store.entry.chain == 0
    assert server.scheduler.stats["started"] == 1  # the warming job
    await server.complete_at(URI, end_of_text(), automatic=False)
    assert store.hits == 1 and doc.completed_version == 1 and doc.cursor == len(TEXT) - 1


async def test_an_edit_is_warmed_at_the_cursor_unless_a_completion_ran_for_it(server):
    doc = server.documents.open(URI, TEXT, 1, "python")
    doc.apply_change("x", (0, 0), (0, 0))
    doc.version = 2
    assert doc.cursor == 1
    await server.complete_at(URI, types.Position(line=0, character=1), automatic=False)
    started, entry = server.scheduler.stats["started"], server.engine.store_for(URI).entry
    background.warm_later(server, URI)  # a completion already ran for version 2: nothing to warm
    await settle(server)
    assert server.scheduler.stats["started"] == started + 1
    assert server.engine.store_for(URI).entry is entry  # still the completion's entry

    doc.apply_change("y", (0, 1), (0, 1))
    doc.version = 3
    background.warm_later(server, URI)
    await settle(server)
    entry = server.engine.store_for(URI).entry
    assert entry.chain == 0 and server.engine.lm.tokenizer.mask_id in entry.tokens  # a hole at the cursor


async def test_a_request_preempts_warming_and_the_setting_switches_it_off(server):
    server.documents.open(URI, TEXT, 1, "python")
    background.warm_later(server, URI)
    await asyncio.sleep(0)  # the warming job is waiting out its delay when the request comes
    await server.complete_at(URI, end_of_text(), automatic=False)
    await settle(server)
    assert server.scheduler.stats["preempted"] == 1
    assert server.scheduler.stats["started"] == 1  # only the completion ran

    server.apply_settings({"warmContext": False})
    other = "file:///other.py"
    server.documents.open(other, TEXT, 1, "python")
    background.warm_later(server, other)
    await settle(server)
    assert server.engine.store_for(other).entry is None


async def test_a_code_action_request_moves_the_cursor_and_warms_there(server):
    """The cursor moved without an edit: the editor's code-action request says where, and the completion typed
    there next finds its context computed."""
    from diffucoder_lsp.server.actions import code_actions

    server.client_supports = lambda _path: False  # no initialize here: plain commands
    doc = server.documents.open(URI, TEXT, 1, "python")
    at = types.Position(line=1, character=4)
    params = types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=URI),
        range=types.Range(start=at, end=at),
        context=types.CodeActionContext(diagnostics=[]),
    )
    code_actions(server, params)
    assert doc.cursor == server.position_to_offset(doc, at)
    await settle(server)
    entry = server.engine.store_for(URI).entry
    assert entry is not None and server.engine.lm.tokenizer.mask_id in entry.tokens
    code_actions(server, params)  # the same place again: nothing new to warm
    assert not server._tasks
    await server.complete_at(URI, at, automatic=False)
    assert server.engine.store_for(URI).hits == 1


# --- speculation ----------------------------------------------------------------------------------------------


class ScriptedEngine:
    """Wraps the real engine client; completions write ``total_<n>`` (n = calls so far), so every suggestion is
    non-empty and recognisable, and each call is recorded with the text around its cursor."""

    def __init__(self, engine) -> None:
        self.real = engine.complete
        self.calls: list[tuple[str, str]] = []

    def complete(self, prefix, suffix, *, settings, max_tokens, should_stop, stream=None):
        from diffucoder_lsp.server.engine_client import Fill

        self.calls.append((prefix, suffix))
        real = self.real(
            prefix, suffix, settings=settings, max_tokens=max_tokens, should_stop=should_stop, stream=stream
        )
        return Fill([f"total_{len(self.calls)}"], real.steps, real.elapsed_ms)


def accept(server, doc, answer) -> types.Position:
    """Insert a suggestion as an editor does when it is accepted; returns the cursor after it."""
    start = server.offset_to_position(doc, answer.offset)
    end = server.offset_to_position(doc, answer.offset + answer.completion.replace)
    doc.apply_change(answer.completion.text, (start.line, start.character), (end.line, end.character))
    doc.version += 1
    return server.offset_to_position(doc, answer.offset + len(answer.completion.text))


async def test_an_accepted_suggestion_is_followed_from_the_cache(server, monkeypatch):
    server.apply_settings({"speculate": True})
    scripted = ScriptedEngine(server.engine)
    monkeypatch.setattr(server.engine, "complete", scripted.complete)
    doc = server.documents.open(URI, TEXT, 1, "python")
    first = await server.complete_at(URI, end_of_text(), automatic=True)
    assert first.completion.text == "total_1"
    entry = server.engine.store_for(URI).entry
    await settle(server)  # the speculation: the document with total_1 accepted, the cursor after it
    assert scripted.calls[1] == (TEXT[:-1] + "total_1", "\n")
    # it worked in a store of its own: the document's still holds the text as it is (for a rejection)
    assert server.engine.store_for(URI).entry is entry
    assert server.engine.store_for(URI + background.SPECULATION_STREAM).entry is not None
    started = server.scheduler.stats["started"]

    cursor = accept(server, doc, first)
    second = await server.complete_at(URI, cursor, automatic=True)
    assert second.completion.text == "total_2"  # computed ahead, served from the cache
    assert server.cache.hits == 1 and len(scripted.calls) == 2  # the request ran no model work
    await settle(server)
    assert server.scheduler.stats["started"] == started + 1  # the next speculation
    assert scripted.calls[2][0].endswith("total_1total_2")
    third = await server.complete_at(URI, accept(server, doc, second), automatic=True)
    assert third.completion.text == "total_3" and server.cache.hits == 2


async def test_speculation_matches_a_real_request(server):
    """With the real engine: the speculated fill is what a request made after accepting would compute."""
    server.apply_settings({"speculate": True})
    doc = server.documents.open(URI, TEXT, 1, "python")
    first = await server.complete_at(URI, end_of_text(), automatic=False)
    assert first is not None and first.completion.text.strip()
    await settle(server)
    cursor = accept(server, doc, first)
    prefix = doc.text[: server.position_to_offset(doc, cursor)]
    suffix = doc.text[len(prefix) :]
    mode, max_tokens = server.span_at(prefix, suffix)
    speculated = server.cache.get((server.settings.sampling_key(), mode), prefix, suffix)
    # computed the way a request after accepting computes it once its context is warm (a fresh store of its own):
    # a cold first pass reads the last layer at the hole only, which in bf16 can flip a near-tie of this random
    # model on some CPUs; what matters here is that speculation filled the right text at the right place
    args = dict(settings=server.settings, max_tokens=max_tokens, should_stop=lambda: False, stream="fresh")
    server.engine.warm(prefix, suffix, **args)
    fresh = server.engine.complete(prefix, suffix, **args)
    assert speculated is not None and speculated.fill == fresh.texts[0]


async def test_a_request_preempts_speculation_and_the_setting_switches_it_off(server, monkeypatch):
    server.apply_settings({"speculate": True})
    scripted = ScriptedEngine(server.engine)
    monkeypatch.setattr(server.engine, "complete", scripted.complete)
    server.documents.open(URI, TEXT, 1, "python")
    await server.complete_at(URI, end_of_text(), automatic=False)
    await asyncio.sleep(0)  # its speculation is queued on the model thread when the next request comes
    await server.complete_at(URI, types.Position(line=0, character=3), automatic=False)
    await settle(server)
    assert server.scheduler.stats["preempted"] == 1
    after = (TEXT[:-1] + "total_1", "\n")  # where the preempted speculation would have put its fill
    assert not server.cache.has((server.settings.sampling_key(), server.span_at(*after)[0]), *after)

    server.apply_settings({"speculate": False})
    started = server.scheduler.stats["started"]
    await server.complete_at(URI, types.Position(line=2, character=0), automatic=False)
    await settle(server)
    assert server.scheduler.stats["started"] == started + 1  # the request, no speculation


async def test_after_a_load_the_document_last_worked_in_is_warmed(tiny_ckpt, monkeypatch):
    monkeypatch.setattr(background, "WARM_DELAY_S", 0.01)
    ls = build_server()
    ls.apply_settings({"model": str(tiny_ckpt), "device": "cpu", "speculate": False}, initial=True)
    try:
        ls.documents.open(URI, TEXT, 1, "python")
        background.warm_later(ls, URI)  # the model is still loading: nothing to do but remember the document
        assert not ls._tasks and ls.last_uri == URI
        await ls.load_model(ls.settings)
        await settle(ls)
        assert ls.engine.ready and ls.engine.store_for(URI).entry is not None
    finally:
        ls.scheduler.shutdown()


async def test_a_failing_background_job_is_logged_and_the_server_carries_on(server, monkeypatch, caplog):
    from diffucoder_lsp.errors import BadInputError

    def broken(*args, **kwargs):
        raise BadInputError("the holes do not fit")

    server.documents.open(URI, TEXT, 1, "python")
    monkeypatch.setattr(server.engine, "warm", broken)
    with caplog.at_level("DEBUG", logger="diffucoder_lsp.server.background"):
        background.warm_later(server, URI)
        await settle(server)
        monkeypatch.setattr(server.engine, "warm", lambda *a, **k: 1 / 0)
        background.warm_later(server, URI)
        await settle(server)
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == "DEBUG" and "do not fit" in levels[0][1]
    assert levels[1][0] == "WARNING" and "ZeroDivisionError" in levels[1][1]
    await server.complete_at(URI, end_of_text(), automatic=False)
    assert server.scheduler.stats["started"] == 3  # both jobs ran, and the completion after them
    assert server.engine.ready and server.documents.get(URI).completed_version == 1
