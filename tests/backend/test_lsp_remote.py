"""Language servers with a backend's URL as their ``model``: two of them share one backend and both complete;
and a Python without torch (or any of the model stack) runs the language server and ``fill`` against it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
from lsp_helpers import SERVER_CMD, initialize, inline_params, items_of, make_client, open_doc, wait_status

# the packages of the in-process model: a client of a backend must not import any of them
MODEL_STACK = ("torch", "safetensors", "tokenizers", "numpy", "huggingface_hub", "gguf")
BLOCKER = """
import sys
BLOCKED = {blocked!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a backend client)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from diffucoder_lsp.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
sys.exit(code)
"""


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
    script = tmp_path / "no_torch.py"
    script.write_text(BLOCKER.format(blocked=set(MODEL_STACK)))
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
