"""``diffucoder backend`` as a command: bad flags exit 2 before loading a model; a real process serves; the
demo's remote runner streams the same fill the in-process runner gives."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from diffucoder_lsp.cli import main
from diffucoder_lsp.engine.options import SamplingOptions


@pytest.mark.parametrize(
    "flags, reason",
    [
        (["--host", "0.0.0.0"], "needs --token-file"),
        (["--model", "http://127.0.0.1:1"], "not another backend's URL"),
        (["--max-batch", "0"], "--max-batch"),
        (["--context-stores", "-1"], "--context-stores must be in 0..4096"),
        (["--token-file", "/nonexistent/token"], "cannot read the token file"),
    ],
)
def test_bad_flags_exit_2(capsys, flags, reason):
    assert main(["backend", *flags]) == 2
    assert reason in capsys.readouterr().err


def test_the_command_serves_until_stopped(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text("t0ken\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffucoder_lsp.cli", "backend", "--port", str(port), "--model", "tiny"]
        + ["--token-file", str(tmp_path / "token")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.1)
        r = httpx.post(
            url + "/v1/infill",
            json={"text": "x = <|mask|>\n", "length": 3},
            headers={"Authorization": "Bearer t0ken"},
            timeout=60,
        )
        assert r.status_code == 200 and len(r.json()["holes"][0]["token_ids"]) <= 3
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert out == b""  # standard output stays clean
    assert b"serving tiny" in err


def test_the_demo_streams_from_a_backend(backend):
    from diffucoder_lsp.tui import DemoSettings, EngineRunner, RemoteRunner

    settings = DemoSettings(options=SamplingOptions(temperature=0.0), length=6)
    text = "def add(a, b):\n    return <|mask|>\n"
    local, remote = EngineRunner("tiny", device="cpu"), RemoteRunner(backend.url)
    assert remote.load().name == "tiny"
    runs = []
    for runner in (local, remote):
        gen, steps = runner.stream(text, settings), []
        while True:
            try:
                canvas, event = next(gen)
                steps.append(event)
            except StopIteration as stop:
                runs.append((canvas, steps, stop.value))
                break
    (c1, s1, r1), (c2, s2, r2) = runs
    assert c2.ids == c1.ids and c2.segments == c1.segments and c2.hole_spans == c1.hole_spans
    assert len(s2) == len(s1) and r2.text == r1.text and r2.holes[0].token_ids == r1.holes[0].token_ids
    token = r2.holes[0].token_ids[0]
    assert remote.token_text(token) == local.token_text(token)
