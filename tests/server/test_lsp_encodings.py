"""Position encodings negotiated at initialize (utf-8, utf-16, utf-32) and used for every position: incremental
changes on lines with CJK and emoji land where the client meant, and edits come back in the same units.
These clients do not declare versioned document changes, so edits arrive as plain ``changes``."""

from __future__ import annotations

import pytest
import pytest_lsp
from lsp_helpers import SERVER_CMD, change_doc, initialize, make_client, open_doc, wait_status
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

UNITS = {
    "utf-8": lambda s: len(s.encode("utf-8")),
    "utf-16": lambda s: len(s.encode("utf-16-le")) // 2,
    "utf-32": len,
}


@pytest_lsp.fixture(
    scope="module",
    params=["utf-8", "utf-16", "utf-32"],
    config=ClientServerConfig(server_command=SERVER_CMD, client_factory=make_client),
)
async def client(lsp_client: LanguageClient, tiny_options, request):
    # The client prefers the encoding under test but also offers utf-16, which every server must support.
    offered = [request.param, "utf-16"] if request.param != "utf-16" else ["utf-16"]
    lsp_client.init_result = await initialize(
        lsp_client, tiny_options, encodings=offered, document_changes=False
    )
    lsp_client.encoding = request.param
    await wait_status(lsp_client)
    yield
    await lsp_client.shutdown_session()


async def test_encoding_is_negotiated(client: LanguageClient):
    assert client.init_result.capabilities.position_encoding == client.encoding


async def test_incremental_changes_and_edits_use_the_negotiated_units(client: LanguageClient):
    units = UNITS[client.encoding]
    uri = f"file:///work/enc-{client.encoding}.py"
    line0 = 'label = "日本語 😀" # note'
    open_doc(client, uri, line0 + "\nz = 1\n")
    # Insert a hole right after the closing quote (mid-line, after the emoji), in the client's units.
    after_quote = units('label = "日本語 😀"')
    change_doc(client, uri, 2, [((0, after_quote, 0, after_quote), " + <|mask|>")])
    # Replace the emoji by two others (a range whose ends are counted in the same units).
    emoji_at = units('label = "日本語 ')
    change_doc(client, uri, 3, [((0, emoji_at, 0, emoji_at + units("😀")), "🎉🎉")])
    expected_line = 'label = "日本語 🎉🎉" + <|mask|> # note'
    client.applied.clear()
    result = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="diffucoder.fillHoles", arguments=[uri])
    )
    assert result == {"applied": True, "holes": 1}
    (edit,) = client.applied[0].edit.changes[uri]
    start = units(expected_line[: expected_line.index("<|mask|>")])
    assert (edit.range.start.line, edit.range.start.character) == (0, start)
    assert (edit.range.end.line, edit.range.end.character) == (0, start + len("<|mask|>"))


async def test_inline_completion_range_is_in_negotiated_units(client: LanguageClient):
    units = UNITS[client.encoding]
    uri = f"file:///work/inline-{client.encoding}.py"
    line = 'msg = "😀日本" + fmt(x'
    open_doc(client, uri, line + "\n")
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=0, character=units(line)),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
    )
    (item,) = result.items
    assert item.range.start == types.Position(line=0, character=units(line))
