"""Settings over LSP: invalid values shown once with window/showMessage and replaced by defaults, enabled
languages, a model change reloading without a restart, and a broken model reported once while the server
keeps answering."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_lsp
from lsp_helpers import (
    SERVER_CMD,
    change_config,
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

DOC = "result = compute(a, b)\n"  # cursor (0, 17): single line


@pytest.fixture(scope="module")
def nan_ckpt(tmp_path_factory):
    """A tiny checkpoint whose final norm is NaN: every forward pass yields NaN logits (a backend failure)."""
    import torch
    from safetensors.torch import load_file, save_file

    from diffucoder_lsp.model.tiny import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("nan") / "ckpt", shards=1)
    (weights,) = folder.glob("*.safetensors")
    state = load_file(str(weights))
    state["model.norm.weight"] = torch.full_like(state["model.norm.weight"], float("nan"))
    save_file(state, str(weights), metadata={"format": "pt"})
    return folder


@pytest_lsp.fixture(
    scope="module", config=ClientServerConfig(server_command=SERVER_CMD, client_factory=make_client)
)
async def client(lsp_client: LanguageClient, tiny_options):
    bad = {**tiny_options, "temperature": "hot", "maxTokens": -3, "enabledLanguages": 5, "colour": "blue"}
    await initialize(lsp_client, bad)
    await wait_status(lsp_client)
    yield
    await lsp_client.shutdown_session()


async def test_invalid_initialization_options_show_one_message_and_keep_the_defaults(client: LanguageClient):
    (msg,) = [m for m in client.messages if "settings" in m.message]
    assert msg.type == types.MessageType.Warning
    for key in ("temperature", "maxTokens", "enabledLanguages", "'colour'"):
        assert key in msg.message
    assert "previous value (0.0)" in msg.message and "previous value (48)" in msg.message
    # enabledLanguages fell back to every language: a Python document gets completions.
    uri = "file:///work/settings.py"
    open_doc(client, uri, DOC)
    assert len(items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17)))) == 1


async def test_invalid_change_is_reported_and_valid_keys_still_apply(client: LanguageClient):
    before = len(client.messages)
    change_config(client, {"tokensPerStep": 0, "enabledLanguages": ["rust"]})
    uri = "file:///work/languages.py"
    open_doc(client, uri, DOC)
    result = await client.text_document_inline_completion_async(inline_params(uri, 0, 17))
    assert items_of(result) == []  # python is no longer enabled
    (msg,) = client.messages[before:]
    assert "tokensPerStep" in msg.message and "enabledLanguages" not in msg.message
    change_config(client, {"enabledLanguages": ["python", "rust"]})
    assert len(items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17)))) == 1


async def test_settings_are_pulled_with_workspace_configuration_when_not_pushed(client: LanguageClient):
    client.set_configuration({"enabledLanguages": ["go"]}, section="diffucoder")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    uri = "file:///work/pulled.py"
    open_doc(client, uri, DOC)
    # The server answers requests while its workspace/configuration round trip is in flight: poll.
    deadline = time.monotonic() + 10
    while items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17))):
        assert time.monotonic() < deadline, "the pulled settings were never applied"
        await asyncio.sleep(0.05)
    change_config(client, {"enabledLanguages": ["*"]})
    assert len(items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17)))) == 1


async def test_model_change_reloads_without_restart(client: LanguageClient, tiny_ckpt_fp32):
    mark = len(client.statuses)
    change_config(client, {"model": str(tiny_ckpt_fp32), "dtype": "fp32"})
    assert (await wait_status(client, ("loading",), after=mark))["model"] == str(tiny_ckpt_fp32)
    ready = await wait_status(client, after=mark)
    assert ready["state"] == "ready" and ready["model"] == str(tiny_ckpt_fp32)
    assert len(client.progress_reports) == 2  # one work-done progress per load
    uri = "file:///work/reloaded.py"
    open_doc(client, uri, DOC)
    assert len(items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17)))) == 1


async def test_broken_model_is_reported_once_and_the_server_keeps_answering(
    client: LanguageClient, tmp_path, tiny_ckpt
):
    missing = tmp_path / "no-such-model"
    before = len(client.messages)
    mark = len(client.statuses)
    change_config(client, {"model": str(missing)})
    err = await wait_status(client, ("error", "ready"), after=mark)
    assert err["state"] == "error" and "no-such-model" in err["message"]
    errors = [m for m in client.messages[before:] if m.type == types.MessageType.Error]
    assert len(errors) == 1 and "no-such-model" in errors[0].message
    uri = "file:///work/broken.py"
    open_doc(client, uri, DOC)
    for _ in range(2):
        assert items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17))) == []
    assert len([m for m in client.messages[before:] if m.type == types.MessageType.Error]) == 1
    mark = len(client.statuses)
    change_config(client, {"model": str(tiny_ckpt), "dtype": "auto"})
    assert (await wait_status(client, after=mark))["state"] == "ready"
    assert len(items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17)))) == 1


async def test_backend_error_during_completion_is_shown_once_and_the_server_keeps_serving(
    client: LanguageClient, nan_ckpt, tiny_ckpt
):
    mark = len(client.statuses)
    change_config(client, {"model": str(nan_ckpt), "dtype": "fp32"})
    assert (await wait_status(client, after=mark))["state"] == "ready"
    before = len(client.messages)
    uri = "file:///work/nan.py"
    open_doc(client, uri, DOC)
    for character in (17, 18):  # two different requests (no cache): both fail, one message
        result = await client.text_document_inline_completion_async(inline_params(uri, 0, character))
        assert items_of(result) == []
    errors = [m for m in client.messages[before:] if m.type == types.MessageType.Error]
    assert len(errors) == 1 and "while completing" in errors[0].message
    assert client.statuses[-1]["state"] == "ready"
    mark = len(client.statuses)
    change_config(client, {"model": str(tiny_ckpt), "dtype": "auto"})
    assert (await wait_status(client, after=mark))["state"] == "ready"
    assert len(items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 17)))) == 1
