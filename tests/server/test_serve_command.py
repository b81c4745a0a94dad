"""``diffucoder serve``: bad flags exit 2 before serving; ``--tcp`` serves the protocol on 127.0.0.1 with the
model chosen on the command line; on stdio, stray prints cannot reach the protocol stream."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest
from lsp_helpers import SERVER_CMD, initialize, inline_params, items_of, make_client, open_doc, wait_status

CLI = [sys.executable, "-m", "diffucoder_lsp.cli"]


@pytest.mark.parametrize(
    "flags, reason",
    [
        (["--tcp", "localhost"], "HOST:PORT"),
        (["--tcp", "127.0.0.1:99999"], "HOST:PORT"),
        (["--device", "gpu9"], "device"),
        # --stdio (which LSP clients append) is accepted: the failure is about the device, not the flag
        (["--stdio", "--device", "gpu9"], "device"),
    ],
)
def test_bad_flags_exit_2_with_a_reason(flags, reason):
    proc = subprocess.run(
        [*CLI, "serve", *flags], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 2
    assert reason in proc.stderr and proc.stdout == ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_tcp_server_with_model_from_the_command_line(tiny_ckpt):
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--tcp", f"127.0.0.1:{port}", "--model", str(tiny_ckpt), "--device", "cpu"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    client = make_client()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                await asyncio.sleep(0.1)
        result = await initialize(client, None)
        assert result.capabilities.inline_completion_provider is not None
        ready = await wait_status(client)
        assert ready["state"] == "ready" and ready["model"] == str(tiny_ckpt) and ready["device"] == "cpu"
        uri = "file:///work/tcp.py"
        open_doc(client, uri, "value = compute(a, b)\n")
        assert (
            len(items_of(await client.text_document_inline_completion_async(inline_params(uri, 0, 16)))) == 1
        )
        await client.shutdown_async(None)
        client.exit(None)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        await client.stop()


def test_stray_prints_go_to_stderr_not_the_protocol_stream(tmp_path):
    """A library printing to stdout (Python or C level) must not corrupt the stdio protocol stream."""
    script = tmp_path / "noisy.py"
    script.write_text(
        "import os, sys\n"
        "from pygls.lsp.server import LanguageServer\n"
        "from diffucoder_lsp.cli import main\n"
        "orig = LanguageServer.start_io\n"
        "def start_io(self, *a, **k):\n"
        "    print('stray print')\n"
        "    os.write(1, b'stray fd write\\n')\n"
        "    return orig(self, *a, **k)\n"
        "LanguageServer.start_io = start_io\n"
        "sys.exit(main(['serve', '--device', 'cpu']))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(script)], input=b"", capture_output=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert b"stray print" in proc.stderr and b"stray fd write" in proc.stderr


async def test_a_lost_client_stops_the_server_promptly_even_mid_completion(tiny_ckpt):
    client = make_client()
    await client.start_io(*SERVER_CMD)
    server = client._server
    try:
        await initialize(
            client, {"model": str(tiny_ckpt), "device": "cpu", "maxTokens": 256, "tokensPerStep": 1}
        )
        await wait_status(client)
        uri = "file:///work/lost.py"
        open_doc(client, uri, "def long_function():\n    \n")
        mark = len(client.statuses)
        pending = asyncio.ensure_future(
            client.text_document_inline_completion_async(inline_params(uri, 1, 4))
        )
        await wait_status(client, ("busy",), after=mark, timeout=10)
        start = time.monotonic()
        server.stdin.close()  # the editor went away without shutdown/exit
        await asyncio.wait_for(server.wait(), timeout=10)
        assert time.monotonic() - start < 3.0  # not the seconds the 256-step job would still take
        pending.cancel()
    finally:
        if server.returncode is None:
            server.kill()
        await client.stop()


def test_server_caps_the_onednn_kernel_cache_unless_the_user_set_it():
    from diffucoder_lsp.commands.serve import cap_kernel_cache

    env: dict[str, str] = {}
    cap_kernel_cache(env)
    assert env == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}
    env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}
    cap_kernel_cache(env)
    assert env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "1024"
