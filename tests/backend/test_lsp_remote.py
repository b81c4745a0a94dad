"""Language servers with a backend's URL as their ``model``: two of them share one backend and both complete;
and a Python without torch (or any of the model stack) runs the language server, ``fill`` and the demo against
it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
from lsp_helpers import SERVER_CMD, initialize, inline_params, items_of, make_client, open_doc, wait_status

# the packages of the in-process model: a client of a backend must not import any of them
MODEL_STACK = ("torch", "safetensors", "tokenizers", "numpy", "huggingface_hub", "gguf")
# a script that runs BODY with the model stack's imports failing, then fails unless none of it was imported
BLOCKER = """
import sys
BLOCKED = {blocked!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a backend client)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
{body}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
sys.exit(code)
"""
CLI = """
from diffucoder_lsp.cli import main
code = main(sys.argv[1:])
"""
# the demo as `diffucoder demo FILE --model URL ...` builds it, run headless: f fills (it waits for the model's
# info), and the script prints what the screen and the runner ended with
DEMO = """
import asyncio
import json
import time

from diffucoder_lsp.cli import build_parser
from diffucoder_lsp.commands.demo import build_app
from diffucoder_lsp.tui.widgets import CodeView


async def drive(argv):
    app = build_app(build_parser().parse_args(argv))
    runner, results = app.runner, []
    stream = runner.stream

    def keep_result(text, settings):  # the stream the worker drains, keeping what it returns
        results.append((yield from stream(text, settings)))
        return results[-1]

    runner.stream = keep_result
    async with app.run_test(size=(100, 28)) as pilot:
        await pilot.press("f")
        deadline = time.monotonic() + 60
        while app.demo.history is None or app.demo.history.status == "running":
            assert time.monotonic() < deadline, "the fill did not end"
            await pilot.pause(0.02)
        history = app.demo.history
        (a, b), = history.canvas.hole_spans
        return {
            "runner": type(runner).__name__,
            "model": app.demo.info.name,
            "status": history.status,
            "line": app.demo.query_one(CodeView).plain_lines[0],
            "revealed": history.tokens[a:b],
            "token_ids": results[0].holes[0].token_ids,
            "text": results[0].text,
        }


print(json.dumps(asyncio.run(drive(sys.argv[1:]))))
code = 0
"""


def blocker_script(path, body: str):
    """Write a script that runs ``body`` (Python that sets ``code``) with the model stack blocked."""
    path.write_text(BLOCKER.format(blocked=set(MODEL_STACK), body=body))
    return path


async def complete_in(client, uri: str, text: str, line: int, character: int):
    open_doc(client, uri, text)
    return await client.text_document_inline_completion_async(inline_params(uri, line, character))


async def start(cmd, url: str):
    client = make_client()
    await client.start_io(*cmd)
    await initialize(client, {"model": url, "debounceMs": 0, "speculate": False})
    status = await wait_status(client)
    assert status["state"] == "ready", status
    assert status["model"] == "tiny" and status["device"] == url
    return client


async def stop(client) -> None:
    await client.shutdown_session()


TEXT = "def add(a, b):\n    return \n\n\nprint(add(1, 2))\n"


async def test_two_language_servers_share_one_backend(backend):
    first, second = await asyncio.gather(start(SERVER_CMD, backend.url), start(SERVER_CMD, backend.url))
    try:
        before = backend.backend.metrics.requests[("/v1/infill", 200)]
        # the same file path in both editors: their request groups still differ
        a, b = await asyncio.gather(
            complete_in(first, "file:///work/a.py", TEXT, 1, 11),
            complete_in(second, "file:///work/a.py", TEXT, 1, 11),
        )
        assert items_of(a) and items_of(b)
        # (not necessarily the same text: at temperature 0.2 rows of one batch draw different random numbers)
        for _ in range(500):  # a stream is counted when its last event is sent
            if backend.backend.metrics.requests[("/v1/infill", 200)] - before == 2:
                break
            await asyncio.sleep(0.01)
        assert backend.backend.metrics.requests[("/v1/infill", 200)] - before == 2
    finally:
        await asyncio.gather(stop(first), stop(second))


async def test_an_unreachable_backend_is_an_error_state_not_a_crash():
    client = make_client()
    await client.start_io(*SERVER_CMD)
    try:
        await initialize(client, {"model": "http://127.0.0.1:9", "debounceMs": 0})
        status = await wait_status(client)
        assert status["state"] == "error" and "cannot reach the backend" in status["message"]
        result = await complete_in(client, "file:///work/b.py", TEXT, 1, 11)
        assert items_of(result) == []
    finally:
        await stop(client)


async def test_without_the_model_stack_the_server_and_fill_use_the_backend(backend, tmp_path):
    script = blocker_script(tmp_path / "no_torch.py", CLI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(script), "fill", "-", "--model", backend.url, "--length", "6"],
        input="x = <|mask|>\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("x = ")
    client = make_client()
    await client.start_io(sys.executable, str(script), "serve", env=env)
    try:
        await initialize(client, {"model": backend.url, "debounceMs": 0, "speculate": False})
        status = await wait_status(client)
        assert status["state"] == "ready", status
        assert items_of(await complete_in(client, "file:///work/c.py", TEXT, 1, 11))
    finally:
        await stop(client)
    # nothing of the model stack was imported, or the blocker's assertion made the exit code non-zero
    assert client._server.returncode == 0
    assert httpx.get(backend.url + "/health").json()["status"] == "ok"


def test_without_the_model_stack_the_demo_fills_from_the_backend(backend, tmp_path):
    from diffucoder_lsp.tui.render import PLACEHOLDER

    script = blocker_script(tmp_path / "no_torch_demo.py", DEMO)
    source = tmp_path / "x.py"
    source.write_text("x = <|mask|>\n")
    proc = subprocess.run(
        [sys.executable, str(script), "demo", str(source), "--model", backend.url, "--length", "6"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    # a non-zero exit: an import of the model stack failed, or the blocker found one of its modules loaded
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert (seen["runner"], seen["model"], seen["status"]) == ("RemoteRunner", "tiny", "done")
    assert seen["text"].startswith("x = ") and seen["text"].endswith("\n")
    # every position of the hole was revealed on screen, with the tokens of the backend's result
    assert seen["revealed"] == seen["token_ids"] and len(seen["token_ids"]) == 6
    assert seen["line"].startswith("x = ") and PLACEHOLDER not in seen["line"]


def test_the_request_body_decodes_as_the_server_would_in_process():
    """Every decoding option is explicit (decoding "plain"), so the backend must get the block the server would
    run (a block of 1 widens with several tokens a step) and, for a block completion, the settle stop."""
    from diffucoder_lsp.backend.config import Limits
    from diffucoder_lsp.backend.schema import parse_infill
    from diffucoder_lsp.server.engine_client import sampling_options
    from diffucoder_lsp.server.remote_engine import request_body
    from diffucoder_lsp.server.settings import Settings

    for s in (Settings(), Settings(tokens_per_step=3), Settings(threshold=0.9), Settings(block_size=0)):
        body = request_body("x = <|mask|>\n", [8], s, 512, False, "first_line_min")
        spec = parse_infill(body, Limits(), 2048)
        assert spec.options.block_size == sampling_options(s).block_size, s
        assert "settle" not in body and not spec.settle
    body = request_body("x = <|mask|>\n", [8], Settings(), 512, False, "first_line_min", settle=True)
    assert parse_infill(body, Limits(), 2048).settle
