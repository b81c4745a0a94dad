"""The stdio transport (:mod:`diffucoder_lsp.server.transport`) against raw bytes: broken framing, malformed
envelopes and params. Every bad message gets exactly one error answer with the right code (or none, for a
notification) and the server keeps answering the requests that follow. The real server runs as a subprocess
and is driven by a small raw client; nothing here loads a model (no ``initialized`` is ever sent)."""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import random
import subprocess
import threading
import time
from collections import Counter

import pytest
from lsp_helpers import SERVER_CMD

from diffucoder_lsp.server.transport import BODY_STALL_S

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
HEADER = b"Content-Length: %d\r\n\r\n"
PROBE_URI = "file:///work/never_opened.py"


def frame(body, header: bytes = HEADER) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (header % len(data) if b"%d" in header else header) + data


def request(msg_id, method: str, params=None) -> dict:
    msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
    return msg if params is None else {**msg, "params": params}


def notification(method: str, params=None) -> dict:
    msg = {"jsonrpc": "2.0", "method": method}
    return msg if params is None else {**msg, "params": params}


def position_params(uri: str = PROBE_URI, line=0, character=0) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}


def inline(msg_id, **position) -> dict:
    params = {**position_params(**position), "context": {"triggerKind": 1}}
    return request(msg_id, "textDocument/inlineCompletion", params)


def code_action(msg_id, uri: str = PROBE_URI) -> dict:
    zero = {"line": 0, "character": 0}
    params = {
        "textDocument": {"uri": uri},
        "range": {"start": zero, "end": zero},
        "context": {"diagnostics": []},
    }
    return request(msg_id, "textDocument/codeAction", params)


def did_open(uri: str, text: str, version: int = 1) -> dict:
    item = {"uri": uri, "languageId": "python", "version": version, "text": text}
    return notification("textDocument/didOpen", {"textDocument": item})


class RawClient:
    """The server as a subprocess, spoken to in bytes; its output parsed strictly (CRLF headers, byte lengths)."""

    def __init__(self, cmd=SERVER_CMD) -> None:
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
        )
        self.inbox: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        out = self.proc.stdout
        try:
            while True:
                length = None
                while (line := out.readline()) != b"\r\n":
                    if not line:
                        return
                    assert line.endswith(b"\r\n"), line
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                self.inbox.put(json.loads(out.read(length).decode("utf-8")))
        except Exception as exc:  # a framing error of the server's own: fail the test that waits
            self.inbox.put(exc)
        finally:
            self.inbox.put(None)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace"))

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, *messages) -> None:
        self.write(b"".join(m if isinstance(m, bytes) else frame(m) for m in messages))

    def next(self, timeout: float) -> dict:
        item = self.inbox.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        if item is None:
            raise AssertionError("server closed its output; stderr:\n" + "".join(self.stderr[-20:]))
        return item

    def responses_until(self, msg_id, timeout: float = 10.0) -> list[dict]:
        """The responses (not the server's own notifications or requests) up to the one answering ``msg_id``."""
        got, deadline = [], time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            if "method" in msg:
                continue
            got.append(msg)
            if msg.get("id") == msg_id:
                return got

    def close(self) -> int:
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def start(cmd=SERVER_CMD) -> RawClient:
    client = RawClient(cmd)
    client.send(request(0, "initialize", {"processId": None, "rootUri": None, "capabilities": {}}))
    (answer,) = client.responses_until(0, timeout=60)
    assert "capabilities" in answer["result"]
    return client


def outcome(msg: dict):
    """(error code, or "result"; id) of a response."""
    return ("result" if "result" in msg else msg["error"]["code"], msg.get("id"))


@pytest.fixture(scope="module")
def server():
    client = start()
    yield client
    assert client.close() == 0  # end of input ends the server normally


_ids = iter(range(10_000, 1_000_000))


def check(server: RawClient, data: bytes, expected: list) -> list[dict]:
    """Send ``data`` then a probe request: the other answers must be ``expected``, exactly (in any order: an async
    handler may answer after the probe; errors for broken bytes come before it)."""
    probe = next(_ids)
    server.write(data + frame(code_action(probe)))
    answers, waiting = [], {i for _, i in expected if i is not None} | {probe}
    while waiting:
        msg = _next_response(server)
        answers.append(msg)
        waiting.discard(msg.get("id"))
    assert outcome(answers.pop([a.get("id") for a in answers].index(probe))) == ("result", probe)
    assert sorted(map(outcome, answers), key=repr) == sorted(expected, key=repr), answers
    for a in answers:
        if "error" in a:
            assert "\n" not in a["error"]["message"] and a["error"]["message"]
    return answers


def _next_response(server: RawClient, timeout: float = 10.0) -> dict:
    while "method" in (msg := server.next(timeout)):
        pass
    return msg


BODY = code_action(500)
LEN = len(json.dumps(BODY))
INVALID_REQUEST, PARSE_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND = -32600, -32700, -32602, -32601
NULL_INVALID = [(INVALID_REQUEST, None)]

FRAMING = {
    "lf_only_headers": (frame(BODY, b"Content-Length: %d\n\n"), [("result", 500)]),
    "mixed_lf_crlf_any_case": (
        frame(BODY, b"content-LENGTH:%d\ncontent-type: application/vscode-jsonrpc; charset=utf-8\r\n\n"),
        [("result", 500)],
    ),
    "leading_zeros_and_blank_lines": (
        b"\r\n\n" + frame(BODY, b"Content-Length:  000%d \r\n\r\n"),
        [("result", 500)],
    ),
    "missing_content_length": (
        frame(BODY, b"Content-Type: application/vscode-jsonrpc\r\n\r\n"),
        NULL_INVALID,
    ),
    "zero": (frame(BODY, b"Content-Length: 0\r\n\r\n"), [(PARSE_ERROR, None)]),
    "negative": (frame(BODY, b"Content-Length: -5\r\n\r\n"), NULL_INVALID),
    "empty_value": (frame(BODY, b"Content-Length:\r\n\r\n"), NULL_INVALID),
    "plus_sign": (frame(BODY, b"Content-Length: +%d\r\n\r\n"), NULL_INVALID),
    "float": (frame(BODY, b"Content-Length: %d.0\r\n\r\n"), NULL_INVALID),
    "hex": (frame(BODY, b"Content-Length: 0x40\r\n\r\n"), NULL_INVALID),
    "fullwidth_digits": (frame(BODY, "Content-Length: ５\r\n\r\n".encode()), NULL_INVALID),
    "too_short": (frame(BODY, b"Content-Length: %d\r\n\r\n" % (LEN - 10)), [(PARSE_ERROR, None)]),
    "too_short_cut_in_a_string": (
        frame(BODY, b"Content-Length: %d\r\n\r\n" % (json.dumps(BODY).index("file:") + 2)),
        [(PARSE_ERROR, None)],
    ),
    "too_long_swallows_next_header": (
        frame(BODY, b"Content-Length: %d\r\n\r\n" % (LEN + 10)),
        [(-32600, 500)],
    ),
    "too_long_swallows_next_message": (
        frame(BODY, b"Content-Length: %d\r\n\r\n" % (LEN + 150)) + frame(code_action(501)),
        [(-32600, 500), ("result", 501)],
    ),
    "two_billion": (frame(BODY, b"Content-Length: 2000000000\r\n\r\n"), NULL_INVALID),
    "one_trillion": (frame(BODY, b"Content-Length: 1000000000000\r\n\r\n"), NULL_INVALID),
    "ten_to_the_30": (frame(BODY, b"Content-Length: 1" + b"0" * 30 + b"\r\n\r\n"), NULL_INVALID),
    "a_thousand_digits": (frame(BODY, b"Content-Length: " + b"9" * 1000 + b"\r\n\r\n"), NULL_INVALID),
    "block_without_end": (
        frame(BODY, b"Content-Length: 3\r\nContent-Length: %d\r\n\r\n"),
        [(-32600, None), ("result", 500)],
    ),
    "garbage_line": (b"garbage without headers\r\n\r\n", NULL_INVALID),
    "json_without_headers": (json.dumps(BODY).encode(), NULL_INVALID),
    "header_line_too_long": (
        b"X-Junk: " + b"a" * 9000 + b"\r\n" + frame(BODY),
        [(-32600, None), ("result", 500)],
    ),
    "too_many_headers": (b"X-A: b\r\n" * 40 + frame(BODY), [(-32600, None), ("result", 500)]),
    "binary_garbage": (bytes(range(256)) * 4, NULL_INVALID),
}

ENVELOPE = {
    "not_json": (frame(b"{not json at all"), [(PARSE_ERROR, None)]),
    "not_utf8": (
        frame(b'{"jsonrpc": "2.0", "id": 502, "method": "x", "params": {"a": "\xff"}}'),
        [(PARSE_ERROR, None)],
    ),
    "nan_read_as_python_writes_it": (  # json.dumps(float("inf")): pygls clients send it, so it is accepted
        frame(b'{"jsonrpc": "2.0", "id": 503, "method": "x", "params": {"a": NaN, "b": -Infinity}}'),
        [(METHOD_NOT_FOUND, 503)],
    ),
    "deep_nesting": (frame(b"[" * 100_000 + b"]" * 100_000), [(PARSE_ERROR, None)]),
    "batch": (frame([code_action(504)]), NULL_INVALID),
    "empty_batch": (frame([]), NULL_INVALID),
    "number": (frame(5), NULL_INVALID),
    "string": (frame("hello"), NULL_INVALID),
    "null": (frame(None), NULL_INVALID),
    "empty_object": (frame({}), NULL_INVALID),
    "jsonrpc_1_0": (frame({**code_action(505), "jsonrpc": "1.0"}), [(INVALID_REQUEST, 505)]),
    "jsonrpc_missing": (
        frame({k: v for k, v in code_action(506).items() if k != "jsonrpc"}),
        [(INVALID_REQUEST, 506)],
    ),
    "jsonrpc_number": (frame({**code_action(507), "jsonrpc": 2.0}), [(INVALID_REQUEST, 507)]),
    "id_bool": (frame(code_action(True)), NULL_INVALID),
    "id_float": (frame(code_action(1.5)), NULL_INVALID),
    "id_null": (frame(code_action(None)), NULL_INVALID),
    "id_object": (frame(code_action({"a": 1})), NULL_INVALID),
    "id_array": (frame(code_action([1])), NULL_INVALID),
    "method_number": (frame({**code_action(508), "method": 123}), [(INVALID_REQUEST, 508)]),
    "method_missing": (frame({"jsonrpc": "2.0", "id": 509, "params": {}}), [(INVALID_REQUEST, 509)]),
    "params_number": (frame({**code_action(510), "params": 5}), [(INVALID_PARAMS, 510)]),
    "params_string": (frame({**code_action(511), "params": "x"}), [(INVALID_PARAMS, 511)]),
    "params_missing": (frame(request(512, "textDocument/codeAction")), [(INVALID_PARAMS, 512)]),
    "notification_params_number": (frame(notification("textDocument/didOpen", 5)), []),
    "did_open_wrong_types": (
        frame(
            notification(
                "textDocument/didOpen",
                {"textDocument": {"uri": 5, "languageId": 1, "version": "x", "text": None}},
            )
        ),
        [],
    ),
    "did_open_missing_fields": (frame(notification("textDocument/didOpen", {"textDocument": {}})), []),
    "notification_with_an_id": (
        frame({**did_open("file:///work/x.py", "x"), "id": 513}),
        [(INVALID_REQUEST, 513)],
    ),
    "request_without_an_id": (frame(notification("textDocument/codeAction", code_action(0)["params"])), []),
    "hover_line_minus_1": (
        frame(request(514, "textDocument/hover", position_params(line=-1))),
        [(INVALID_PARAMS, 514)],
    ),
    "hover_unregistered": (
        frame(request(515, "textDocument/hover", position_params())),
        [(METHOD_NOT_FOUND, 515)],
    ),
    "inline_line_minus_1": (frame(inline(516, line=-1)), [(INVALID_PARAMS, 516)]),
    "inline_line_string": (frame(inline(517, line="3")), [(INVALID_PARAMS, 517)]),
    "inline_line_bool": (frame(inline(518, line=True)), [(INVALID_PARAMS, 518)]),
    "inline_line_fraction": (frame(inline(519, line=0.5)), [(INVALID_PARAMS, 519)]),
    "inline_character_huge": (frame(inline(520, character=2**40)), [(INVALID_PARAMS, 520)]),
    "inline_position_string": (
        frame(
            request(
                521, "textDocument/inlineCompletion", {"textDocument": {"uri": PROBE_URI}, "position": "here"}
            )
        ),
        [(INVALID_PARAMS, 521)],
    ),
    "inline_uri_number": (
        frame(
            request(522, "textDocument/inlineCompletion", {**inline(0)["params"], "textDocument": {"uri": 5}})
        ),
        [(INVALID_PARAMS, 522)],
    ),
    "inline_valid_but_no_model": (frame(inline(523)), [("result", 523)]),
    "unknown_method_without_params": (frame(request(524, "diffucoder/nothing")), [(METHOD_NOT_FOUND, 524)]),
    "string_id_answered_with_it": (frame({**code_action("abc"), "method": None}), [(INVALID_REQUEST, "abc")]),
    "client_response_unknown_id": (frame({"jsonrpc": "2.0", "id": "nobody", "result": 1}), []),
    "client_error_null_id": (
        frame({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}),
        [],
    ),
    "client_response_bad_jsonrpc": (frame({"jsonrpc": "1.0", "id": 7, "result": None}), []),
}


@pytest.mark.parametrize("data, expected", FRAMING.values(), ids=FRAMING.keys())
def test_framing_error_is_answered_once_and_the_server_keeps_answering(server, data, expected):
    check(server, data, expected)


@pytest.mark.parametrize("data, expected", ENVELOPE.values(), ids=ENVELOPE.keys())
def test_malformed_message_is_answered_once_with_the_right_code(server, data, expected):
    check(server, data, expected)


def test_error_messages_name_the_problem(server):
    (bad,) = check(server, frame(inline(530, line=-1)), [(INVALID_PARAMS, 530)])
    assert "$.params.position" in bad["error"]["message"] and "-1" in bad["error"]["message"]
    (bad,) = check(
        server,
        frame(notification("textDocument/didOpen", 5)) + frame(inline(531, line="x")),
        [(INVALID_PARAMS, 531)],
    )
    assert "$.params.position.line" in bad["error"]["message"]
    (bad,) = check(server, frame(BODY, b"Content-Length: 2000000000\r\n\r\n"), NULL_INVALID)
    assert "2000000000" in bad["error"]["message"] and "64 MiB" in bad["error"]["message"]


def test_a_stalled_body_is_answered_after_the_stall_timeout(server):
    start = time.monotonic()
    server.write(
        frame(code_action(540), b"Content-Length: %d\r\n\r\n" % (len(json.dumps(code_action(540))) + 100))
    )
    (answer,) = server.responses_until(540, timeout=BODY_STALL_S + 10)
    assert outcome(answer) == (INVALID_REQUEST, 540)
    assert BODY_STALL_S - 0.5 < time.monotonic() - start < BODY_STALL_S + 5
    check(server, b"", [])


def test_headerless_json_is_answered_once_it_stalls(server):
    server.write(json.dumps(code_action(541)).encode())  # no header, no newline, then nothing
    (answer,) = server.responses_until(None, timeout=BODY_STALL_S + 10)
    assert outcome(answer) == (INVALID_REQUEST, None)
    check(server, b"", [])


def test_second_initialize_is_refused_and_the_workspace_survives(server):
    uri = "file:///work/reinit.py"
    before = len(server.stderr)
    server.send(did_open(uri, "x = 1\n"))
    server.send(
        request(
            550,
            "initialize",
            {
                "processId": None,
                "rootUri": None,
                "capabilities": {},
                "initializationOptions": {"maxTokens": 8},
            },
        )
    )
    (answer,) = server.responses_until(550)
    assert outcome(answer) == (INVALID_REQUEST, 550) and "already initialized" in answer["error"]["message"]
    change = {
        "range": {"start": {"line": 0, "character": 4}, "end": {"line": 0, "character": 5}},
        "text": "<|mask|>",
    }
    params = {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [change]}
    server.send(notification("textDocument/didChange", params), code_action(551, uri))
    (answer,) = server.responses_until(551)
    commands = [c["command"] for c in answer["result"] or []]
    assert commands == ["diffucoder.fillHoles"]  # offered only when the edit reached the document
    time.sleep(0.2)  # let the stderr reader catch up
    assert not [line for line in server.stderr[before:] if "KeyError" in line or "Traceback" in line]


def _junk(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([0, -1, 1, 2**31, 2**70, -(2**63)])
    if kind == 1:
        return rng.choice([0.5, -1.0, 1e308, 3.0])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind in (3, 4, 5):
        return "".join(rng.choice('ab:/\\"é😀\n\r{}[] \x00') for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        keys = [
            "textDocument",
            "position",
            "line",
            "character",
            "uri",
            "text",
            "version",
            "range",
            "start",
            "end",
            "context",
            "triggerKind",
            "command",
            "arguments",
            "contentChanges",
            "languageId",
            "id",
            "capabilities",
        ]
        return {rng.choice(keys): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]


def _mutate(rng: random.Random, value, depth: int = 0):
    """Replace, drop or retype one leaf somewhere in ``value``."""
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.8:
        key = rng.choice(list(value))
        if rng.random() < 0.2:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: _mutate(rng, value[key], depth + 1)}
    return _junk(rng)


def _templates(uri: str) -> list[dict]:
    zero = {"line": 0, "character": 0}
    return [
        code_action(0, uri),
        inline(0, uri=uri),
        request(0, "textDocument/completion", position_params(uri)),
        request(0, "textDocument/hover", position_params(uri)),
        request(
            0,
            "workspace/executeCommand",
            {"command": "diffucoder.regenerateSelection", "arguments": [uri, {"start": zero, "end": zero}]},
        ),
        request(0, "initialize", {"processId": None, "rootUri": None, "capabilities": {}}),
        request(0, "fuzz/unknown", {"a": 1}),
        did_open(uri, "def f():\n    return 1\n"),
        notification(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": 9}, "contentChanges": [{"text": "y = 2\n"}]},
        ),
        notification("textDocument/didClose", {"textDocument": {"uri": uri}}),
        notification("$/setTrace", {"value": "off"}),
        notification("$/cancelRequest", {"id": 1}),
    ]


def _fuzz_message(rng: random.Random, n: int):
    """(bytes, own id, counted): a malformed message, the id it was given, and whether a correct server must
    answer that id (a well-framed message whose id survived the mutations)."""
    uri = f"file:///work/fuzz{rng.randrange(3)}.py"
    msg = dict(rng.choice(_templates(uri)))
    own = 10**9 + n if rng.random() < 0.5 else f"r{n}"  # no junk value (see _junk) can equal these
    if "id" in msg:
        msg["id"] = own
    for _ in range(rng.randrange(1, 3)):
        if isinstance(msg, dict) and isinstance(msg.get("params"), dict) and rng.random() < 0.6:
            msg = {**msg, "params": _mutate(rng, msg["params"])}  # mostly the params, some the envelope
        else:
            msg = _mutate(rng, msg)
    if rng.random() < 0.75:  # well framed: the envelope and params are what is broken (a broken frame may
        # take its id with it: such an id is not counted, but still never answered twice)
        counted = isinstance(msg, dict) and "method" in msg and msg.get("id") == own
        return frame(msg), own, counted
    body = json.dumps(msg).encode()
    damage = rng.randrange(12)
    if damage == 0:
        return frame(body, b"Content-Length: %d\n\n"), own, False
    if damage == 1:
        return frame(body, b"Content-Type: x\r\n\r\n"), own, False
    if damage == 2:
        return frame(body, b"Content-Length: %d\r\n\r\n" % rng.randrange(max(1, len(body)))), own, False
    if damage == 3:
        return frame(body, b"Content-Length: %d\r\n\r\n" % (len(body) + rng.randrange(1, 40))), own, False
    if damage == 4:
        value = rng.choice(
            [b"-5", b"abc", b"", b"1e3", b"2000000000", b"1000000000000", b"1" + b"0" * 30, b"+3"]
        )
        return frame(body, b"Content-Length: " + value + b"\r\n\r\n"), own, False
    if damage == 5:
        return body, own, False
    if damage == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b":", b";"), own, False
    if damage == 7:
        return frame(body[: rng.randrange(len(body) + 1)] + b"\xff\xfe" + body), own, False
    if damage == 8:
        return b"X-Long: " + b"z" * rng.randrange(8000, 10000) + b"\r\n" + frame(body), own, False
    if damage == 9:
        return frame(body, b"Content-Length: 1\r\nContent-Length: %d\r\n\r\n"), own, False
    if damage == 10:
        return frame(body[: rng.randrange(len(body))]), own, False
    return (
        b"\r\n" * rng.randrange(1, 4) + frame(body, b"X-A: b\r\n" * rng.randrange(30, 40) + HEADER),
        own,
        False,
    )


def run_fuzz(count: int, seed: int) -> None:
    rng = random.Random(seed)
    client = start()
    try:
        expected, own, stream = set(), set(), []
        for n in range(1, count + 1):
            data, msg_id, counted = _fuzz_message(rng, n)
            stream.append(data)
            own.add(msg_id)
            if counted:
                expected.add(msg_id)
        stream.append(frame(code_action("final")))
        for i in range(0, len(stream), 50):  # in pieces: a pipe holds 64 KiB while the server answers
            client.write(b"".join(stream[i : i + 50]))
        answered: Counter = Counter()
        deadline = time.monotonic() + 30 + count / 100
        while not (answered["final"] and all(answered[k] for k in expected)):
            msg = client.next(max(0.01, deadline - time.monotonic()))
            if "method" not in msg and msg.get("id") is not None:
                answered[msg["id"]] += 1
        assert [k for k in own if answered[k] > 1] == []  # never two answers to one request
        assert client.proc.poll() is None
        client.send(request("bye", "shutdown"))
        assert outcome(client.responses_until("bye")[-1]) == ("result", "bye")
        client.send(code_action("late"))
        assert outcome(client.responses_until("late")[-1]) == (INVALID_REQUEST, "late")  # after shutdown
        client.send(notification("exit"))
        assert client.proc.wait(timeout=20) == 0
    finally:
        client.close()


def test_fuzz_300_malformed_messages():
    run_fuzz(300, seed=1234)


@pytest.mark.slow
def test_fuzz_10000_malformed_messages():
    run_fuzz(10_000, seed=98765)


def test_unreadable_input_exits_with_status_1(caplog):
    from diffucoder_lsp.server.app import build_server
    from diffucoder_lsp.server.transport import start_io

    class Unreadable:
        def read1(self, n):
            raise OSError(5, "Input/output error")

    caplog.set_level(logging.ERROR, logger="diffucoder_lsp.server.transport")
    with pytest.raises(SystemExit) as info:
        start_io(build_server(), Unreadable(), io.BytesIO())
    assert info.value.code == 1
    assert "cannot read the client's input" in caplog.text and "restarts the server" in caplog.text
