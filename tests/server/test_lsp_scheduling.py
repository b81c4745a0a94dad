"""Scheduling over LSP: empty answers before the model is ready, $/cancelRequest between denoising steps,
cancel-previous per document, outdated versions dropped, debounce, and the typed-ahead cache.

Long requests come from a block completion of 256 masks revealed one per step; short ones from a single-line
completion of 6 tokens.

The server is ``scripted_server.py``: the real server and engine, except that a completion the engine finishes
reads a fixed text (``SINGLE_LINE`` here), so what the tiny random checkpoint writes cannot empty an answer, and
each denoising step takes at least 20 ms, so a long job lasts over 5 s unless it is stopped.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_lsp
from lsp_helpers import (
    SCRIPTED_SERVER_CMD,
    change_config,
    change_doc,
    initialize,
    inline_params,
    items_of,
    make_client,
    open_doc,
    wait_status,
)
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pytest_lsp import ClientServerConfig, LanguageClient
from scripted_server import SINGLE_LINE

pytestmark = pytest.mark.asyncio(loop_scope="module")

LONG_DOC = "def long_function():\n    \n"  # cursor (1, 4): an empty indented line -> block of maxTokens
SHORT_DOC = "total = compute(a, b)\n"  # cursor (0, 16): code follows -> single line


@pytest_lsp.fixture(
    scope="module", config=ClientServerConfig(server_command=SCRIPTED_SERVER_CMD, client_factory=make_client)
)
async def client(lsp_client: LanguageClient, tiny_options):
    options = {**tiny_options, "maxTokens": 256, "tokensPerStep": 1, "maxTokensSingleLine": 6}
    await initialize(lsp_client, options)  # no waiting for the model: the first test checks the early answers
    yield
    await lsp_client.shutdown_session()


def texts_of(result) -> list[str]:
    return [item.insert_text for item in items_of(result)]


def send_inline(client: LanguageClient, msg_id: str, uri: str, line: int, character: int, automatic=False):
    params = inline_params(uri, line, character, automatic=automatic)
    return asyncio.wrap_future(
        client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)
    )


async def test_requests_before_the_model_is_ready_answer_empty_at_once(client: LanguageClient):
    uri = "file:///work/early.py"
    open_doc(client, uri, SHORT_DOC)
    start = time.monotonic()
    result = await client.text_document_inline_completion_async(inline_params(uri, 0, 16))
    assert items_of(result) == [] and time.monotonic() - start < 1.0
    assert not any(s["state"] == "ready" for s in client.statuses)  # it really was answered while loading
    assert (await wait_status(client))["state"] == "ready"
    result = await client.text_document_inline_completion_async(inline_params(uri, 0, 16))
    assert texts_of(result) == [SINGLE_LINE]  # the same request, once loaded, runs the model


async def test_cancel_request_answers_fast_and_the_next_request_is_served(client: LanguageClient):
    uri = "file:///work/cancel.py"
    open_doc(client, uri, LONG_DOC)
    mark = len(client.statuses)
    long = send_inline(client, "long-cancel", uri, 1, 4)
    await wait_status(client, ("busy",), after=mark, timeout=10)
    await asyncio.sleep(0.3)  # well inside the denoising loop
    start = time.monotonic()
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="long-cancel"))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(long, timeout=5)
    assert time.monotonic() - start < 2.0  # the job had over 4 s of steps left
    # The model thread stopped at a step boundary: a short request is answered long before the 256-step job
    # could have finished (over 5 s).
    other = "file:///work/after_cancel.py"
    open_doc(client, other, "after = compute(a, b)\n")  # text not seen before: no cache hit, the model runs
    start = time.monotonic()
    result = await client.text_document_inline_completion_async(inline_params(other, 0, 16))
    assert texts_of(result) == [SINGLE_LINE]
    assert time.monotonic() - start < 3.0


async def test_a_new_request_for_the_same_document_supersedes_the_running_one(client: LanguageClient):
    uri = "file:///work/supersede.py"
    open_doc(client, uri, LONG_DOC + SHORT_DOC)
    mark = len(client.statuses)
    start = time.monotonic()
    first = send_inline(client, "long-superseded", uri, 1, 4)
    await wait_status(client, ("busy",), after=mark, timeout=10)
    second = send_inline(client, "short-superseding", uri, 2, 16)
    first_result, second_result = await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
    assert items_of(first_result) == []  # answered empty, not as an error: the client did not cancel it
    assert texts_of(second_result) == [SINGLE_LINE]
    assert time.monotonic() - start < 4.0


async def test_results_for_an_outdated_version_are_dropped(client: LanguageClient):
    uri = "file:///work/outdated.py"
    open_doc(client, uri, LONG_DOC)
    mark = len(client.statuses)
    start = time.monotonic()
    pending = send_inline(client, "long-outdated", uri, 1, 4)
    await wait_status(client, ("busy",), after=mark, timeout=10)
    change_doc(client, uri, 2, [((1, 4, 1, 4), "r")])
    result = await asyncio.wait_for(pending, timeout=10)
    assert items_of(result) == []
    assert time.monotonic() - start < 3.0  # the job stopped at the next step instead of finishing


async def test_debounce_drops_a_request_superseded_while_waiting(client: LanguageClient):
    change_config(client, {"debounceMs": 400})
    try:
        uri = "file:///work/debounce.py"
        open_doc(client, uri, "debounced = compute(a, b)\n")  # text not seen before: no cache hit
        mark = len(client.statuses)
        first = send_inline(client, "debounced-1", uri, 0, 20, automatic=True)
        await asyncio.sleep(0.1)
        second = send_inline(client, "debounced-2", uri, 0, 20, automatic=True)
        first_result, second_result = await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        assert items_of(first_result) == [] and texts_of(second_result) == [SINGLE_LINE]
        busy = [s for s in client.statuses[mark:] if s["state"] == "busy"]
        assert len(busy) == 1  # only the second request reached the model
    finally:
        change_config(client, {"debounceMs": 0})


async def test_typing_along_a_suggestion_is_served_from_the_cache(client: LanguageClient):
    uri = "file:///work/typed_ahead.py"
    open_doc(client, uri, SHORT_DOC)
    (item,) = items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 16)))
    text = item.insert_text
    assert text == SINGLE_LINE
    mark = len(client.statuses)
    change_doc(client, uri, 2, [((0, 16, 0, 16), text[0])])
    (again,) = items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17)))
    assert again.insert_text == text[1:]
    assert again.range.start == types.Position(line=0, character=17)
    assert not any(s["state"] == "busy" for s in client.statuses[mark:])  # no model run
