"""What keeps one client from hurting the others: bearer-token auth, a bounded queue (429 + Retry-After),
out-of-memory split and retried (507 for the request that does not fit alone, and the server keeps serving),
and the refusal to listen on a public address without a token."""

from __future__ import annotations

import threading

import httpx
import pytest
from backend_helpers import TestDenoisers, running_backend

from diffucoder_lsp.backend.config import BackendConfig, Limits, is_loopback, read_token
from diffucoder_lsp.errors import BadInputError

BODY = {"text": "def add(a, b):\n    return <|mask|>\n", "length": 4, "temperature": 0}


def test_auth_refuses_a_missing_or_wrong_token(lm):
    with running_backend(lm, BackendConfig(port=0, token="s3cret")) as served:
        url = served.url
        assert httpx.get(url + "/health").status_code == 200  # load balancers probe without a token
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"}):
            for method, path in (("POST", "/v1/infill"), ("POST", "/v1/completions"), ("GET", "/v1/models")):
                r = httpx.request(method, url + path, json=BODY, headers=headers, timeout=30)
                assert r.status_code == 401, (path, headers)
                assert r.headers["WWW-Authenticate"] == "Bearer"
                assert r.json()["error"]["type"] == "unauthorized"
            assert httpx.get(url + "/metrics", headers=headers).status_code == 401
        ok = httpx.post(url + "/v1/infill", json=BODY, headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["holes"]


def test_a_public_address_needs_a_token(tmp_path):
    with pytest.raises(BadInputError, match="needs --token-file"):
        BackendConfig(host="0.0.0.0")
    assert BackendConfig(host="0.0.0.0", token="t").host == "0.0.0.0"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1")
    (tmp_path / "tok").write_text("  abc123\n")
    assert read_token(str(tmp_path / "tok")) == "abc123"
    (tmp_path / "bad").write_text("two words")
    with pytest.raises(BadInputError, match="one token"):
        read_token(str(tmp_path / "bad"))


def test_a_full_queue_answers_429_with_retry_after(lm):
    denoisers = TestDenoisers(lm, hold=True)
    config = BackendConfig(port=0, max_batch=1, limits=Limits(max_queue=1, retry_after_s=3))
    with running_backend(lm, config, make_denoiser=denoisers) as served:
        answers: list[int] = []

        def send():
            answers.append(httpx.post(served.url + "/v1/infill", json=BODY, timeout=60).status_code)

        running = threading.Thread(target=send)
        running.start()
        assert denoisers.entered.wait(30)  # the first request holds the model
        waiting = threading.Thread(target=send)
        waiting.start()
        while served.backend.batcher.queue_depth() < 1:
            threading.Event().wait(0.01)
        refused = httpx.post(served.url + "/v1/infill", json=BODY, timeout=60)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "3"
        assert "busy" in refused.json()["error"]["message"]
        denoisers.release.set()
        running.join(60)
        waiting.join(60)
        assert answers == [200, 200]
        assert 'diffucoder_errors_total{kind="queue_full"} 1' in httpx.get(served.url + "/metrics").text


def test_out_of_memory_splits_the_batch_and_fails_only_the_request_that_does_not_fit(lm):
    # a canvas wider than 60 tokens "does not fit": any batch holding the long request fails
    denoisers = TestDenoisers(lm, oom=lambda x: x.shape[1] > 60, hold=True)
    config = BackendConfig(port=0, max_batch=3, gather_ms=1000)  # the batch starts once all three are in
    long_body = {**BODY, "text": "# " + "word " * 80 + "\nx = <|mask|>\n"}
    with running_backend(lm, config, make_denoiser=denoisers) as served:
        answers: dict[str, httpx.Response] = {}

        def send(name, body):
            answers[name] = httpx.post(served.url + "/v1/infill", json=body, timeout=60)

        threads = [
            threading.Thread(target=send, args=(name, body))
            for name, body in (("short", BODY), ("long", long_body), ("short2", BODY))
        ]
        for t in threads:
            t.start()
        while served.backend.batcher.queue_depth() + served.backend.batcher.running_rows() < 3:
            threading.Event().wait(0.01)
        denoisers.release.set()
        for t in threads:
            t.join(60)
        assert answers["short"].status_code == 200 and answers["short2"].status_code == 200
        assert answers["long"].status_code == 507
        assert "out of memory" in answers["long"].json()["error"]["message"]
        assert denoisers.calls[0] == 3  # one batch of three, then halves, then single rows
        # and the server goes on serving
        denoisers.oom = lambda x: False
        assert httpx.post(served.url + "/v1/infill", json=long_body, timeout=60).status_code == 200
        metrics = httpx.get(served.url + "/metrics").text
        assert 'diffucoder_errors_total{kind="oom"}' in metrics
