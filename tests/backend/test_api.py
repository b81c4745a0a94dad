"""The backend's own API against the in-process engine: ``/v1/infill`` is ``fill --json`` token for token (and
``fill --model URL`` prints what a local ``fill`` prints), its stream has one event per step and ends with the
record, bad requests get a one-line 400, and the health, models and metrics endpoints answer."""

from __future__ import annotations

import json

import httpx
import pytest

from diffucoder_lsp.cli import main
from diffucoder_lsp.engine.remote import parse_sse

TEXT = "def add(a, b):\n    return <|mask|>\n\n\ndef area(r):\n    return 3.14 * <|mask|>\n"


def fill(capsys, path, *flags) -> str:
    assert main(["fill", str(path), *flags]) == 0
    return capsys.readouterr().out


def without_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "elapsed_ms"}


@pytest.mark.parametrize(
    "text, flags",
    [
        (TEXT, ["--length", "10"]),  # fast: the server's decoding (cache, blocks)
        ("def add(a, b):\n    return <|mask|>\n", []),  # an auto hole, cut as the editor cuts it
        (TEXT, ["--decoding", "exact", "--length", "6"]),
        (TEXT, ["--decoding", "plain", "--length", "8", "--tokens-per-step", "2", "--raw"]),
    ],
)
def test_infill_is_fill_token_for_token(backend, capsys, tmp_path, text, flags):
    path = tmp_path / "a.py"
    path.write_text(text)
    flags = ["--temperature", "0", *flags]
    local = json.loads(fill(capsys, path, "--model", "tiny", "--json", *flags))
    remote = json.loads(fill(capsys, path, "--model", backend.url, "--json", *flags))
    assert without_time(remote) == without_time(local)
    assert [h["token_ids"] for h in remote["holes"]] == [h["token_ids"] for h in local["holes"]]
    assert fill(capsys, path, "--model", backend.url, *flags) == fill(capsys, path, "--model", "tiny", *flags)


def test_stream_has_one_event_per_step_then_the_record(backend):
    body = {"text": TEXT, "length": 6, "temperature": 0}
    with httpx.Client(timeout=60) as client:
        plain = client.post(backend.url + "/v1/infill", json=body).json()
        with client.stream("POST", backend.url + "/v1/infill", json={**body, "stream": True}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [e for e in parse_sse(response.iter_lines()) if e[0] != "keepalive"]
    kinds = [k for k, _ in events]
    assert kinds[0] == "canvas" and kinds[-1] == "done"
    steps = [d for k, d in events if k == "step"]
    assert len(steps) == plain["steps"] == len(kinds) - 2
    assert [s["step"] for s in steps] == list(range(len(steps)))
    assert steps[-1]["remaining"] == 0
    # every position is revealed exactly once, with the token the record has
    revealed = {p: t for s in steps for p, t in zip(s["positions"], s["tokens"], strict=True)}
    canvas = events[0][1]
    for (a, b), hole in zip(canvas["hole_spans"], plain["holes"], strict=True):
        assert [revealed[p] for p in range(a, b)] == hole["token_ids"]
    assert without_time(events[-1][1]) == without_time(plain)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"text": "no holes here"}', "no holes"),
        (b'{"text": "a <|mask|>", "temprature": 0}', "unknown field 'temprature'"),
        (b'{"text": "a <|mask|>", "temperature": "hot"}', "temperature must be a number"),
        (b'{"text": "a <|mask|>", "temperature": -1}', "temperature must be between"),
        (b'{"text": "a <|mask|>", "length": 0}', "length must be"),
        (b'{"text": "a <|mask|> <|mask|>", "length": [4]}', "1 lengths given for 2 holes"),
        (b'{"text": "a <|mask|>", "decoding": "exact", "cache": true}', "--cache cannot be combined"),
        (b'{"text": "a <|mask|>", "context_tokens": 1000000}', "context_tokens must be between"),
        (b'{"text": "' + b"<|mask|>" * 17 + b'"}', "at most 16"),
        (b'{"prefix": "a", "text": "b <|mask|>"}', "not both"),
        (b'{"text": "a <|mask|> <|mask|>", "settle": true}', "settle applies to one hole"),
    ],
)
def test_bad_requests_get_a_one_line_400(backend, body, reason):
    response = httpx.post(backend.url + "/v1/infill", content=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert reason in error["message"] and "\n" not in error["message"]
    assert error["type"] == "bad_request" and error["code"] == 400


def test_too_large_a_body_is_413(backend):
    big = {"text": "x" * (1 << 20) + "<|mask|>"}
    response = httpx.post(backend.url + "/v1/infill", json=big, timeout=30)
    assert response.status_code == 413 and "at most" in response.json()["error"]["message"]


def test_health_models_and_metrics(backend):
    with httpx.Client(timeout=30) as client:
        assert client.get(backend.url + "/health").json()["status"] == "ok"
        (model,) = client.get(backend.url + "/v1/models").json()["data"]
        assert model["id"] == "tiny" and model["object"] == "model"
        client.post(backend.url + "/v1/infill", json={"text": "x = <|mask|>", "length": 2})
        metrics = client.get(backend.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'diffucoder_requests_total{endpoint="/v1/infill",status="200"}' in text
    assert "diffucoder_batch_rows_bucket" in text and "diffucoder_queue_depth 0" in text
    assert 'diffucoder_request_seconds_count{endpoint="/v1/infill"}' in text
