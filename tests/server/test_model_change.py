"""A model change while a completion is queued (issue: hardening): the queued request runs on the old model, the
new one, or answers empty; never an internal error, and the status never reads ``ready`` while loading."""

from __future__ import annotations

import asyncio
import logging

import pytest
from lsprotocol import types

from diffucoder_lsp.server.app import build_server
from diffucoder_lsp.server.engine_client import LOADING, READY

URI = "file:///change.py"
TEXT = "def add(a, b):\n    return \n"


@pytest.fixture(scope="module")
def lm(tiny_ckpt):
    from diffucoder_lsp.model.loading import load_model

    return load_model(str(tiny_ckpt), device="cpu")


@pytest.fixture
def server(lm):
    ls = build_server()
    ls.apply_settings(
        {"temperature": 0.0, "debounceMs": 0, "speculate": False, "warmContext": False}, initial=True
    )
    ls.engine.lm, ls.engine.state = lm, READY
    ls.show = lambda kind, text: None  # no client attached
    yield ls
    ls.scheduler.shutdown()


async def test_a_request_queued_before_a_bad_model_change_never_errors(server, caplog):
    server.documents.open(URI, TEXT, 1, "python")
    states = []
    original = server.engine.set_state
    server.engine.set_state = lambda state, message=None: (states.append(state), original(state, message))[1]
    caplog.set_level(logging.DEBUG, logger="diffucoder_lsp")
    pos = types.Position(line=1, character=11)
    requests = [asyncio.ensure_future(server.complete_at(URI, pos, automatic=False)) for _ in range(3)]
    server.apply_settings({"model": "/etc"})  # not a checkpoint: the load fails
    answers = await asyncio.gather(*requests, return_exceptions=True)
    while server._tasks:
        await asyncio.gather(*list(server._tasks), return_exceptions=True)
    assert not any(isinstance(a, BaseException) for a in answers)
    assert "AttributeError" not in caplog.text and "NoneType" not in caplog.text
    assert server.engine.state == "error" and server.engine.lm is None
    # after "loading" the status may only read "error" (the load failed), never "ready" or "busy"
    after = states[states.index(LOADING) :]
    assert set(after) <= {LOADING, "error"}, states
    # and a request now answers empty instead of failing
    assert await server.complete_at(URI, pos, automatic=False) is None
