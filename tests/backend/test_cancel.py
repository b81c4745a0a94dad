"""A request leaves its batch when its client disconnects or a newer request of the same ``X-Request-Group``
supersedes it: its handler answers at once (409 for a superseded request), and the model thread retires its row
at the next step, so a batch whose rows are all gone stops there instead of running to its end."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
from backend_helpers import TestDenoisers, running_backend

from diffucoder_lsp.backend.config import BackendConfig

BODY = {"text": "def add(a, b):\n    return <|mask|>\n", "length": 12, "temperature": 0}


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_newer_request_of_the_same_group_supersedes_the_running_one(lm):
    denoisers = TestDenoisers(lm, hold=True)
    with running_backend(lm, BackendConfig(port=0), make_denoiser=denoisers) as served:
        answers: dict[str, httpx.Response] = {}

        def send(name, group):
            answers[name] = httpx.post(
                served.url + "/v1/infill", json=BODY, headers={"X-Request-Group": group}, timeout=60
            )

        old = threading.Thread(target=send, args=("old", "editor-1:a.py"))
        old.start()
        assert denoisers.entered.wait(30)  # the old request is in its first step
        other = threading.Thread(target=send, args=("other", "editor-2:a.py"))  # another editor: untouched
        new = threading.Thread(target=send, args=("new", "editor-1:a.py"))
        other.start()
        wait_for(lambda: served.backend.batcher.queue_depth() == 1)
        new.start()
        old.join(30)  # answered at once, while its step is still held
        assert answers["old"].status_code == 409
        assert "superseded" in answers["old"].json()["error"]["message"]
        denoisers.release.set()
        new.join(60)
        other.join(60)
        assert answers["new"].status_code == 200 and answers["other"].status_code == 200
        assert denoisers.batches[0] == [1]  # the old row left after the step it was in
        assert 'diffucoder_errors_total{kind="superseded"} 1' in httpx.get(served.url + "/metrics").text


def test_a_disconnected_stream_leaves_its_batch(lm):
    denoisers = TestDenoisers(lm, hold=True)
    with running_backend(lm, BackendConfig(port=0), make_denoiser=denoisers) as served:
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", served.url + "/v1/infill", json={**BODY, "stream": True}) as response:
                lines = response.iter_lines()
                assert next(lines) == "event: canvas"
                assert denoisers.entered.wait(30)
            # leaving the block closed the connection, mid-step
        wait_for(lambda: served.backend.metrics.errors["disconnected"] == 1)
        denoisers.release.set()
        wait_for(lambda: served.backend.batcher.running_rows() == 0)
        assert denoisers.batches[0] == [1]
        # the model thread is free for the next request
        assert httpx.post(served.url + "/v1/infill", json=BODY, timeout=60).status_code == 200


def test_a_client_that_hangs_up_before_its_answer_is_dropped_from_the_queue(lm):
    denoisers = TestDenoisers(lm, hold=True)
    with running_backend(lm, BackendConfig(port=0, max_batch=1), make_denoiser=denoisers) as served:
        host, port = served.url.removeprefix("http://").split(":")
        first = threading.Thread(
            target=lambda: httpx.post(served.url + "/v1/infill", json=BODY, timeout=60), daemon=True
        )
        first.start()
        assert denoisers.entered.wait(30)
        body = json.dumps(BODY).encode()
        with socket.create_connection((host, int(port))) as raw:  # a plain request, then hang up
            raw.sendall(
                b"POST /v1/infill HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_for(lambda: served.backend.batcher.queue_depth() == 1)
        wait_for(lambda: served.backend.batcher.queue_depth() == 0)
        assert served.backend.metrics.errors["disconnected"] == 1
        denoisers.release.set()
        first.join(60)
        assert len(denoisers.batches) == 1  # the hung-up request never ran
