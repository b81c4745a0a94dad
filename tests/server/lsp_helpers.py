"""Helpers for the language-server tests: a recording pytest-lsp client, capabilities, document and request
builders. Every server runs as a subprocess (``python -m diffucoder_lsp.server``, or ``scripted_server.py``: the
same server whose finished completions read a fixed text)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities, make_test_lsp_client

SERVER_CMD = [sys.executable, "-m", "diffucoder_lsp.server"]
SCRIPTED_SERVER_CMD = [sys.executable, str(Path(__file__).with_name("scripted_server.py"))]
STATUS = "diffucoder/status"


def plain(value: Any) -> Any:
    """pygls hands unknown notifications' params over as namedtuples: back to dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def make_client() -> LanguageClient:
    """pytest-lsp's client, also recording ``diffucoder/status`` and answering ``workspace/applyEdit``."""
    client = make_test_lsp_client()
    client.statuses: list[dict[str, Any]] = []  # type: ignore[attr-defined]
    client.applied: list[types.ApplyWorkspaceEditParams] = []  # type: ignore[attr-defined]

    @client.feature(STATUS)
    def on_status(params):
        client.statuses.append(plain(params))

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def on_apply_edit(params: types.ApplyWorkspaceEditParams):
        client.applied.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    return client


def capabilities(
    encodings: list[str] | None = ("utf-16",), document_changes: bool = True
) -> types.ClientCapabilities:
    """Neovim 0.11's recorded capabilities, plus work-done progress, versioned workspace edits (unless
    ``document_changes`` is false) and the given position encodings."""
    caps = client_capabilities("neovim@v0.11")
    caps.workspace.workspace_edit.document_changes = document_changes
    caps.window = caps.window or types.WindowClientCapabilities()
    caps.window.work_done_progress = True
    if encodings is not None:
        caps.general = caps.general or types.GeneralClientCapabilities()
        caps.general.position_encodings = list(encodings)
    return caps


async def initialize(
    client: LanguageClient, options: dict[str, Any], encodings: list[str] | None = ("utf-16",), **caps
) -> types.InitializeResult:
    return await client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(encodings, **caps),
            initialization_options=options,
            root_uri=None,
        )
    )


async def wait_status(
    client: LanguageClient, states=("ready", "error"), timeout: float = 60.0, after: int = 0
):
    """The first status at index >= ``after`` whose state is in ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for st in client.statuses[after:]:
            if st.get("state") in states:
                return st
        await asyncio.sleep(0.02)
    raise AssertionError(f"no status in {states} within {timeout}s; got {client.statuses[after:]}")


def open_doc(client: LanguageClient, uri: str, text: str, version: int = 1, language: str = "python") -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)
        )
    )


def change_doc(
    client: LanguageClient, uri: str, version: int, edits: list[tuple[tuple[int, int, int, int], str]]
):
    """Incremental changes: ((start line, start char, end line, end char), new text) each."""
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(
                        start=types.Position(line=a, character=b), end=types.Position(line=c, character=d)
                    ),
                    text=text,
                )
                for (a, b, c, d), text in edits
            ],
        )
    )


def inline_params(
    uri: str, line: int, character: int, automatic: bool = False
) -> types.InlineCompletionParams:
    kind = (
        types.InlineCompletionTriggerKind.Automatic
        if automatic
        else types.InlineCompletionTriggerKind.Invoked
    )
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=kind),
    )


def completion_params(uri: str, line: int, character: int) -> types.CompletionParams:
    return types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked),
    )


def items_of(result) -> list:
    if result is None:
        return []
    return list(result.items) if hasattr(result, "items") else list(result)


def change_config(client: LanguageClient, settings: dict[str, Any]) -> None:
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"diffucoder": settings})
    )


def code_action_commands(actions) -> dict[str, list]:
    """command -> arguments of the code actions in a result.

    lsprotocol's client-side converter structures any object with a ``command`` key as a ``Command`` (even a
    ``CodeAction`` whose ``command`` is an object) and stringifies the inner object; undo that here."""
    import ast

    out = {}
    for action in actions or []:
        cmd = action.command
        if isinstance(cmd, str) and cmd.startswith("{"):
            inner = ast.literal_eval(cmd)
            out[inner["command"]] = inner.get("arguments")
        elif isinstance(cmd, str):
            out[cmd] = action.arguments
        else:
            out[cmd.command] = cmd.arguments
    return out
