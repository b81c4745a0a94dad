"""The stdio message loop: LSP framing and JSON-RPC envelopes that no client input can silence.

pygls' reader (``pygls.io_.run_async``) trusts its input: after one frame with LF-only headers or a missing, zero,
negative, too short or too long ``Content-Length`` it waits for a header or body that never comes, alive but deaf
for the rest of the session; ``Content-Length: 1000000000000`` ends it with ``MemoryError``; a message it cannot
structure is never answered. This replaces only that reader; pygls keeps the protocol, handlers and writer.

* Headers end in CRLF or LF, names in any case. A non-header line, an over-long line, too many headers, a missing,
  non-decimal or over-:data:`MAX_CONTENT_LENGTH` length (never allocated) is answered -32600 (id null) and the
  reader resynchronises on the next ``Content-Length:`` in the stream.
* A body that is not JSON is answered -32700; one whose JSON ends before its length (a too-long length took the
  next message's start, or :data:`BODY_STALL_S` passed without a byte) -32600, giving the extra bytes back.
* Garbage right after an answered error is the rest of that message: skipped unanswered (one error per message).
* :func:`dispatch` checks envelopes before pygls sees them; a request whose params do not structure is answered
  -32602 naming the field, such a notification is logged. Only unreadable input ends with exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
from typing import Any

import attrs
from pygls.io_ import StdoutWriter
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage

from .protocol import describe

log = logging.getLogger(__name__)

MAX_CONTENT_LENGTH = 64 * 1024 * 1024  # a 64 MiB message is far beyond any real document sync
MAX_HEADER_LINE = 8 * 1024
MAX_HEADERS = 32
BODY_STALL_S = 3.0  # a client writes a message in one go: this long without a byte mid-message means it lied
READ_CHUNK = 64 * 1024

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602

_KEY = b"content-length:"
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DECIMAL = re.compile(rb"[ \t]*([0-9]+)[ \t]*")
END = object()  # what MessageReader.read returns at end of input (a JSON body may well be null)
_SKIP, _LONG_LINE, _STALLED_LINE = object(), object(), object()


# Python's decoder, NaN and Infinity included: not JSON, but what Python clients (pygls' own among them) write
# for a float("inf"); refusing them would leave the request without an answer carrying its id.
_DECODER = json.JSONDecoder()


class TransportFailure(Exception):
    """The client's input cannot be read any more (an I/O error, not malformed bytes): resync is impossible."""


class _Stalled(Exception):
    """Nothing arrived within the timeout; the read stays in flight."""


@attrs.define
class FrameError:
    """A malformed frame or envelope, to answer with a JSON-RPC error."""

    code: int
    message: str
    id: int | str | None = None


def _show(value: Any, limit: int = 40) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _request_id(value: Any) -> int | str | None:
    """The id to answer a broken message with: a request's own id when it has a valid one, else null."""
    if isinstance(value, dict) and "method" in value and _valid_id(value.get("id")):
        return value["id"]
    return None


def _find_key(data: bytes | bytearray, start: int) -> int:
    return bytes(data).lower().find(_KEY, start)


class MessageReader:
    """Frames JSON values out of a blocking binary stream, read in ``executor`` (one read in flight at a time).

    :meth:`read` returns a parsed JSON value, a :class:`FrameError` to answer, or :data:`END`. Reads
    use ``read1`` (whatever is available), so a stalled body is noticed by a timeout instead of a read that
    blocks until bytes that never come; a read that times out stays in flight and is awaited again next time.
    """

    def __init__(self, stream, executor=None, stall_s: float = BODY_STALL_S) -> None:
        self._read = getattr(stream, "read1", None) or stream.read
        self._executor = executor
        self._stall_s = stall_s
        self._buf = bytearray()
        self._pending: asyncio.Future | None = None
        self._eof = False
        self._quiet = False  # an error was just answered: garbage that follows is part of the same message
        self._resync_from: int | None = None

    async def _more(self, timeout: float | None = None) -> bool:
        """Append the next chunk to the buffer; False at end of input; :class:`_Stalled` after ``timeout``."""
        if self._eof:
            return False
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(self._executor, self._read, READ_CHUNK)
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            raise _Stalled
        future, self._pending = self._pending, None
        try:
            data = future.result()
        except (OSError, ValueError, RuntimeError) as exc:
            raise TransportFailure(f"cannot read the client's input: {type(exc).__name__}: {exc}") from exc
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def _peek_line(self, pos: int):
        """The line at ``pos`` (without LF or CRLF) and where the next one starts, not consumed; or a marker."""
        start = pos
        while True:
            end = self._buf.find(b"\n", start, pos + MAX_HEADER_LINE + 1)
            if end >= 0:
                line = bytes(self._buf[pos:end])
                return (line[:-1] if line.endswith(b"\r") else line), end + 1
            if len(self._buf) - pos > MAX_HEADER_LINE:
                return _LONG_LINE
            start = len(self._buf)
            try:  # a partial line only waits so long: raw JSON without headers is answered, not held
                if not await self._more(self._stall_s if len(self._buf) > pos else None):
                    return END
            except _Stalled:
                return _STALLED_LINE

    async def _resync(self, start: int) -> bool:
        """Drop bytes up to the next ``Content-Length:`` (any case) at or after ``start``; False at end of input."""
        skipped = 0
        while True:
            at = _find_key(self._buf, start)
            if at >= 0:
                skipped += at
                del self._buf[:at]
                log.info("resynchronised on the next Content-Length header, %d bytes skipped", skipped)
                return True
            drop = max(0, len(self._buf) - (len(_KEY) - 1))  # keep a tail: the key may straddle two reads
            skipped += drop
            del self._buf[:drop]
            start = 0
            if not await self._more():
                return False

    def _garbage(self, message: str):
        """Bytes where a header should be: answered -32600 unless they trail an error just answered (then they are
        the rest of that message). The header block is still in the buffer: resync from just past its start, as
        the rest of a message cut short can look like a header line with the next message's header glued on."""
        self._resync_from = 1
        return _SKIP if self._quiet else self._answer(message)

    def _answer(
        self, message: str, code: int = INVALID_REQUEST, msg_id=None, *, resync_from: int | None = None
    ):
        self._resync_from = resync_from
        self._quiet = True
        return FrameError(code, message, msg_id)

    async def read(self):
        while True:
            if self._resync_from is not None:
                start, self._resync_from = self._resync_from, None
                if not await self._resync(start):
                    return END
            item = await self._read_frame()
            if item is not _SKIP:
                return item

    async def _read_frame(self):
        """One frame: a JSON value, a FrameError, _SKIP (garbage skipped quietly: read on) or END."""
        length: int | None = None
        count = pos = 0  # the header block stays in the buffer (from 0 to pos) until it is complete
        while True:
            peeked = await self._peek_line(pos)
            if peeked is END:
                if self._buf.strip():
                    log.warning("input ended inside a message header (%d bytes dropped)", len(self._buf))
                return END
            if peeked is _LONG_LINE:
                return self._garbage("header line too long")
            if peeked is _STALLED_LINE:
                return self._garbage("an unterminated header line (expected Content-Length)")
            line, end = peeked
            if not line.strip():
                if length is not None:
                    del self._buf[:end]
                    break
                if count == 0:  # a stray blank line between messages
                    del self._buf[:end]
                    continue
                return self._garbage("header block without Content-Length")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                return self._garbage(f"expected a header line, got {_show(line)!r}")
            count += 1
            if count > MAX_HEADERS:
                return self._garbage(f"more than {MAX_HEADERS} header lines")
            if name.lower() == b"content-length":
                match = _DECIMAL.fullmatch(value)
                if match is None:
                    bad = _show(value.strip())
                    text = f"invalid Content-Length {bad!r}: expected a non-negative decimal"
                    return self._answer(text, resync_from=pos + 1)
                digits = match.group(1).lstrip(b"0") or b"0"
                n = int(digits) if len(digits) <= 12 else MAX_CONTENT_LENGTH + 1
                if length is not None and n != length:  # the previous block never ended: answer it, restart
                    del self._buf[:pos]
                    return self._answer("header block without an end")
                if n > MAX_CONTENT_LENGTH:
                    text = f"Content-Length {_show(digits)} over the {MAX_CONTENT_LENGTH >> 20} MiB limit"
                    return self._answer(text, resync_from=pos + 1)
                length = n
            pos = end
        body, stalled = await self._body(length)
        return END if body is None else self._decode(body, length, stalled)

    async def _body(self, length: int):
        """(body, stalled): ``length`` bytes, or what arrived before :data:`BODY_STALL_S` of silence."""
        while len(self._buf) < length:
            try:
                if not await self._more(self._stall_s):
                    log.warning("input ended inside a message body (%d of %d bytes)", len(self._buf), length)
                    return None, False
            except _Stalled:
                body = bytes(self._buf)
                self._buf.clear()
                return body, True
        body = bytes(self._buf[:length])
        del self._buf[:length]
        return body, False

    def _decode(self, body: bytes, length: int, stalled: bool):
        text = body.decode("utf-8", "surrogateescape")
        silence = f"then nothing for {self._stall_s:g} s"
        try:
            value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip(" \t\r\n\ufeff")))  # BOM too
        except (ValueError, RecursionError) as exc:
            at = _find_key(body, 1)  # a too-long Content-Length took the next header with it: give it back
            if at >= 0:
                self._buf[0:0] = body[at:]
            if not body.strip():
                return self._answer(
                    f"empty body ({silence if stalled else f'Content-Length {length}'})", PARSE_ERROR
                )
            why = silence if stalled else str(exc).split("\n")[0]
            return self._answer(f"body is not valid JSON ({why})", PARSE_ERROR)
        used = len(text[:end].encode("utf-8", "surrogateescape"))
        tail = body[used:]
        if tail.strip() or stalled:
            self._buf[0:0] = tail  # the start of the next message: parse it as such
            why = silence if stalled else "then other bytes"
            text = f"Content-Length {length} does not match the message ({used} bytes of JSON, {why})"
            return self._answer(text, INVALID_REQUEST, _request_id(value))
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._answer(f"body is not valid UTF-8 ({exc.reason})", PARSE_ERROR)
        self._quiet = False
        return value


def reply_error(protocol, msg_id, code: int, message: str) -> None:
    """Answer with a JSON-RPC error through pygls' writer path (``_send_data``: UTF-8, Content-Length in bytes).

    A dict, not lsprotocol's ``ResponseErrorMessage``, whose converter drops a null ``id`` the spec requires."""
    log.warning("answered %d to id %s: %s", code, json.dumps(msg_id), message)
    protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


def dispatch(protocol, msg: Any) -> None:
    """Check a message's JSON-RPC envelope, structure it with pygls' converter and hand it to pygls.

    Every request with a valid id gets exactly one answer: from pygls, or an error from here. A client's
    response is never answered (two strict peers would trade errors forever); a broken one is logged."""
    if not isinstance(msg, dict):
        kind = "a batch (array)" if isinstance(msg, list) else _show(msg)
        return reply_error(protocol, None, INVALID_REQUEST, f"expected a JSON-RPC message object, got {kind}")
    has_id = "id" in msg
    msg_id = msg["id"] if has_id and _valid_id(msg["id"]) else None
    if "method" not in msg and ("result" in msg or "error" in msg):
        if msg.get("jsonrpc") != "2.0" or msg_id is None:
            return log.warning("dropped a malformed response from the client (id %s)", _show(msg.get("id")))
        try:
            message = protocol.structure_message(msg)
        except Exception as exc:
            return log.warning("dropped a response from the client: %s", describe(exc))
        return _handle(protocol, message, "response")
    if msg.get("jsonrpc") != "2.0":
        got = _show(msg["jsonrpc"]) if "jsonrpc" in msg else "nothing"
        return reply_error(protocol, msg_id, INVALID_REQUEST, f'"jsonrpc" must be "2.0", got {got}')
    if has_id and msg_id is None:
        return reply_error(
            protocol, None, INVALID_REQUEST, f"id must be an integer or a string, got {_show(msg['id'])}"
        )
    method = msg.get("method")
    if not isinstance(method, str):
        got = _show(method) if "method" in msg else "none (and no result or error)"
        return reply_error(protocol, msg_id, INVALID_REQUEST, f"method must be a string, got {got}")
    params = msg.get("params")
    if params is not None and not isinstance(params, dict | list):
        text = f"params of {method} must be an object or an array, got {_show(params)}"
        if has_id:
            return reply_error(protocol, msg_id, INVALID_PARAMS, text)
        return log.warning("dropped notification: %s", text)
    kind = protocol.get_message_type(method)
    if kind is None:
        kind = JsonRPCRequestMessage if has_id else JsonRPCNotification
        msg = {**msg, "params": params}
    elif params is None:
        msg = {k: v for k, v in msg.items() if k != "params"}  # absent: the type's default (or "required")
    takes_id = "id" in attrs.fields_dict(kind)
    if has_id and not takes_id:
        return reply_error(protocol, msg_id, INVALID_REQUEST, f"{method} is a notification: it takes no id")
    if not has_id and takes_id:
        return log.warning("dropped %s: a request sent without an id", method)
    try:
        message = protocol._converter.structure(msg, kind)
    except Exception as exc:
        text = f"invalid params for {method}: {describe(exc)}"
        if has_id:
            return reply_error(protocol, msg_id, INVALID_PARAMS, text)
        return log.warning("dropped notification: %s", text)
    return _handle(protocol, message, method)


def _handle(protocol, message, what: str) -> None:
    try:
        protocol.handle_message(message)
    except BrokenPipeError:
        raise
    except Exception:  # pygls answers a request's failures itself; this is a bug, not the client's
        log.exception("handling %s failed", what)


async def serve(protocol, reader: MessageReader, stop_event: threading.Event) -> None:
    """Read, answer framing errors, dispatch; until end of input or ``stop_event`` (set by ``shutdown()``)."""
    while not stop_event.is_set():
        try:
            item = await reader.read()
        except TransportFailure:
            raise
        except Exception as exc:  # a reader bug would otherwise leave the server alive and deaf
            raise TransportFailure(f"stdio reader failed: {type(exc).__name__}: {exc}") from exc
        if item is END:
            log.info("end of input: stopping")
            return
        if isinstance(item, FrameError):
            reply_error(protocol, item.id, item.code, item.message)
        else:
            dispatch(protocol, item)


def start_io(server, stdin=None, stdout=None) -> None:
    """Serve ``server`` (a pygls ``LanguageServer``) over stdio with this module's reader; pygls' own
    ``_start_io_async`` otherwise: the same writer, BrokenPipe and ``exit`` handling, ``shutdown()`` at the end.

    Raises ``SystemExit(1)`` when the input could not be read any more, so an editor restarts the server."""
    log.info("starting the stdio server")
    server._stop_event = stop_event = threading.Event()
    server.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
    reader = MessageReader(stdin or sys.stdin.buffer, server.thread_pool)
    failure = None
    try:
        asyncio.run(serve(server.protocol, reader, stop_event))
    except BrokenPipeError:
        log.error("Connection to the client is lost! Shutting down the server.")
    except TransportFailure as exc:
        failure = exc
        log.error("%s; exiting so that the editor restarts the server", exc)
    except (KeyboardInterrupt, SystemExit):  # SystemExit: pygls' exit handler, as with pygls' own loop
        pass
    finally:
        server.shutdown()
    if failure is not None:
        raise SystemExit(1)
