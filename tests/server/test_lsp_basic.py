"""End to end over LSP on one server: capabilities, progress and status, sync, inline completion, completion,
both commands, code actions, UTF-16 positions, skipped documents, a garbage message."""

from __future__ import annotations

import asyncio

import pytest
import pytest_lsp
from lsp_helpers import (
    SERVER_CMD,
    change_doc,
    code_action_commands,
    completion_params,
    initialize,
    inline_params,
    items_of,
    make_client,
    open_doc,
    wait_status,
)
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_lsp.fixture(
    scope="module", config=ClientServerConfig(server_command=SERVER_CMD, client_factory=make_client)
)
async def client(lsp_client: LanguageClient, tiny_options):
    lsp_client.init_result = await initialize(lsp_client, tiny_options)
    await wait_status(lsp_client)
    yield
    await lsp_client.shutdown_session()


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


async def test_initialize_advertises_features(client: LanguageClient):
    caps = client.init_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert caps.code_action_provider is not None
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert set(caps.execute_command_provider.commands) == {
        "diffucoder.fillHoles",
        "diffucoder.regenerateSelection",
    }
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    assert client.init_result.server_info.name == "diffucoder"


async def test_load_reports_progress_and_status(client: LanguageClient):
    states = [s["state"] for s in client.statuses]
    assert states[0] == "loading" and "ready" in states
    ready = next(s for s in client.statuses if s["state"] == "ready")
    assert ready["device"] == "cpu" and ready["model"]
    ((token, reports),) = client.progress_reports.items()
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert isinstance(reports[-1], types.WorkDoneProgressEnd) and reports[-1].message == "ready"


async def test_inline_completion_after_incremental_changes(client: LanguageClient):
    uri = "file:///work/basic.py"
    open_doc(client, uri, "def add(a, b):\n    return \n")
    change_doc(client, uri, 2, [((1, 11, 1, 11), "a +")])
    change_doc(client, uri, 3, [((1, 14, 1, 14), " ")])
    before = len(client.statuses)
    result = await client.text_document_inline_completion_async(inline_params(uri, 1, 15))
    assert isinstance(result, types.InlineCompletionList)
    (item,) = result.items
    assert isinstance(item.insert_text, str) and item.insert_text.strip() and "<|" not in item.insert_text
    assert item.range.start == types.Position(line=1, character=15)
    states = [s["state"] for s in client.statuses[before:]]
    assert "busy" in states and states[-1] == "ready"
    assert client.statuses[-1]["lastLatencyMs"] > 0


async def test_completion_returns_one_text_edit_item(client: LanguageClient):
    uri = "file:///work/completion.py"
    open_doc(client, uri, "import os\n\n\ndef main():\n    \n")
    result = await client.text_document_completion_async(completion_params(uri, 4, 4))
    assert isinstance(result, types.CompletionList) and result.is_incomplete
    (item,) = result.items
    assert item.text_edit.range.start == types.Position(line=4, character=4)
    assert item.text_edit.new_text.strip() and item.label.strip()
    assert item.insert_text_format == types.InsertTextFormat.PlainText


async def test_fill_holes_command_applies_versioned_edit_at_utf16_positions(client: LanguageClient):
    uri = "file:///work/holes.py"
    line0 = 's = "日本語 😀" + <|mask|>'
    text = f"{line0}\nt = '🎉🎉' * <|mask|>\n"
    open_doc(client, uri, text, version=7)
    client.applied.clear()
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="diffucoder.fillHoles", arguments=[uri])
    )
    assert result == {"applied": True, "holes": 2}
    (params,) = client.applied
    (doc_edit,) = params.edit.document_changes
    assert doc_edit.text_document.version == 7
    e0, e1 = doc_edit.edits
    start0 = utf16_len('s = "日本語 😀" + ')
    assert (e0.range.start.line, e0.range.start.character) == (0, start0)
    assert (e0.range.end.line, e0.range.end.character) == (0, start0 + len("<|mask|>"))
    start1 = utf16_len("t = '🎉🎉' * ")
    assert (e1.range.start.line, e1.range.start.character) == (1, start1)
    assert all("<|mask|>" not in e.new_text for e in (e0, e1))


async def test_regenerate_selection_command(client: LanguageClient):
    uri = "file:///work/regen.py"
    open_doc(client, uri, "def f(x):\n    y = x * 2\n    return y\n")
    client.applied.clear()
    rng = {"start": {"line": 1, "character": 8}, "end": {"line": 1, "character": 9}}  # the x of "x * 2"
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="diffucoder.regenerateSelection", arguments=[uri, rng])
    )
    assert result == {"applied": True, "holes": 1}
    (edit,) = client.applied[0].edit.document_changes[0].edits
    assert (
        edit.range.start.line,
        edit.range.start.character,
        edit.range.end.line,
        edit.range.end.character,
    ) == (
        1,
        8,
        1,
        9,
    )
    assert "\n" not in edit.new_text  # code follows on the line: the replacement stays on it


@pytest.mark.parametrize(
    "arguments",
    [
        ["file:///nope.py"],
        [5],
        [
            "file:///nope.py",
            {"start": {"line": float("inf"), "character": 0}, "end": {"line": 0, "character": 0}},
        ],
        ["file:///nope.py", {"start": {"line": -1, "character": 0}, "end": {"line": 0, "character": 0}}],
        ["file:///nope.py", {"start": {"line": 2**31, "character": 0}, "end": {"line": 0, "character": 0}}],
        ["file:///nope.py", {"start": {"line": "1", "character": 0}, "end": {"line": 0, "character": 0}}],
        ["file:///nope.py", {"start": {"line": 0.5, "character": 0}, "end": {"line": 0, "character": 0}}],
        ["file:///nope.py", [1, 2]],
    ],
)
async def test_bad_command_arguments_are_invalid_params(client: LanguageClient, arguments):
    with pytest.raises(Exception, match="Invalid Params"):
        await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="diffucoder.regenerateSelection", arguments=arguments)
        )


async def test_code_actions_offer_both_commands(client: LanguageClient):
    uri = "file:///work/actions.py"
    open_doc(client, uri, "x = <|mask|>\ny = 2\n")
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(
                start=types.Position(line=1, character=0), end=types.Position(line=1, character=5)
            ),
            context=types.CodeActionContext(diagnostics=[]),
        )
    )
    commands = code_action_commands(actions)
    assert commands["diffucoder.fillHoles"] == [uri]
    assert commands["diffucoder.regenerateSelection"][1]["end"] == {"line": 1, "character": 5}


async def test_large_and_binary_documents_are_skipped_with_a_log_line(client: LanguageClient):
    big = "file:///work/big.py"
    binary = "file:///work/blob.py"
    open_doc(client, big, "x = 1\n" * 200_000)  # 1.2M characters
    open_doc(client, binary, "x = '\x00\x01'\n")
    for uri in (big, binary):
        result = await client.text_document_inline_completion_async(inline_params(uri, 0, 4))
        assert items_of(result) == []
    await asyncio.sleep(0.2)
    logs = [m.message for m in client.log_messages]
    assert any("skipping file:///work/big.py" in m for m in logs)
    assert any("skipping file:///work/blob.py" in m and "binary" in m for m in logs)


async def test_garbage_message_does_not_kill_the_server(client: LanguageClient):
    stdin = client._server.stdin
    for body in (
        b"{not json at all",
        b'{"jsonrpc": "2.0", "id": 99, "method": "textDocument/hover", "params": 3}',
    ):
        stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    stdin.write(b"garbage without headers\r\n\r\n")
    await stdin.drain()
    uri = "file:///work/after_garbage.py"
    open_doc(client, uri, "value = \n")
    result = await client.text_document_inline_completion_async(inline_params(uri, 0, 8))
    assert isinstance(result, types.InlineCompletionList)
    assert client._server.returncode is None
