"""The server's LSP protocol: pygls' :class:`LanguageServerProtocol` with three guards against client input.

* A second ``initialize`` is refused (``-32600 already initialized``). pygls would run it: it builds a new
  ``Workspace`` without the open documents, so every later ``didChange`` of a document opened before raises
  ``KeyError`` in pygls' own handler (before ours runs) and the server silently stops seeing edits; our handler
  would also re-apply the initialization options over the user's settings.
* A request after ``shutdown`` is answered ``-32600`` instead of being dropped unanswered (pygls logs and returns,
  so a client waiting on it would hang); ``exit`` still goes through. A ``$/cancelRequest`` whose id is not an
  integer or a string is ignored with a warning (pygls raised on an object or a list).
* The converter structures primitives strictly (:func:`strict_primitives`): cattrs' defaults coerce, so a
  ``"line": "1"`` became 1, ``"line": true`` became 1 and a ``didOpen`` with ``"text": null`` opened a document
  whose text is ``None``. Wrong types are now structuring failures, which the transport
  (:mod:`diffucoder_lsp.server.transport`) answers ``-32602`` naming the field (:func:`describe`).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import cattrs
from cattrs.v import format_exception
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidRequest
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import RPCRequest
from pygls.protocol.language_server import lsp_method

log = logging.getLogger(__name__)

ALREADY_INITIALIZED = "already initialized"
SHUTTING_DOWN = "server is shutting down"
_SNAKE = re.compile(r"_([a-z])")  # cattrs names fields as Python does; the client spells them in camelCase


def _strict_int(value: Any, _type: type) -> int:
    # JSON has one number type: an integral float (1.0, as some clients write) is an integer; a bool is not.
    if isinstance(value, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _strict_float(value: Any, _type: type) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")


def _strict_str(value: Any, _type: type) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _strict_bool(value: Any, _type: type) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected a boolean, got {type(value).__name__}")


def strict_primitives(converter) -> None:
    """Make ``converter`` refuse wrong JSON types for int, float, str and bool fields instead of coercing them."""
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(bool, _strict_bool)


def _format(exc: BaseException, type_) -> str:
    if isinstance(exc, (ValueError, TypeError)) and type_ is None and exc.args:
        return str(exc.args[0])  # a validator's own words, e.g. "Position.line should be in range ..."
    return format_exception(exc, type_)


def describe(exc: BaseException) -> str:
    """A structuring failure in one line, naming the first offending fields as the client spells them."""
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        problems = [
            _SNAKE.sub(lambda m: m.group(1).upper(), p) for p in cattrs.transform_error(exc, "$", _format)
        ]
        text = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text.replace("\n", " ")[:300]


class DiffuCoderProtocol(LanguageServerProtocol):
    """pygls' LSP protocol, refusing a second ``initialize`` and answering requests after ``shutdown``."""

    def __init__(self, server, converter) -> None:
        strict_primitives(converter)
        super().__init__(server, converter)
        self._initialized = False

    def _refuse(self, msg_id, message: str) -> None:
        log.warning("refused request %r: %s", msg_id, message)
        self._send_response(
            msg_id, error=types.ResponseError(code=JsonRpcInvalidRequest.CODE, message=message)
        )

    def handle_message(self, message) -> None:
        # Refused here, before pygls runs any handler, so nothing (workspace, documents, settings) is touched and
        # the log gets one line instead of the traceback a failing handler leaves.
        if isinstance(message, RPCRequest):
            if self._shutdown and message.method != types.EXIT:
                self._refuse(message.id, SHUTTING_DOWN)
                return
            if message.method == types.INITIALIZE and self._initialized:
                self._refuse(message.id, ALREADY_INITIALIZED)
                return
        super().handle_message(message)

    def _handle_cancel_notification(self, msg_id) -> None:
        # lsprotocol lets any JSON through as the id to cancel; pygls would raise on an object or a list
        if isinstance(msg_id, bool) or not isinstance(msg_id, int | str):
            log.warning("ignored $/cancelRequest: the id is not an integer or a string")
            return
        super()._handle_cancel_notification(msg_id)

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        """The first ``initialize`` runs pygls' (which runs ours); any later one fails without side effects."""
        if self._initialized:  # only reachable if a caller bypasses handle_message
            raise JsonRpcInvalidRequest(ALREADY_INITIALIZED)
        # Set before delegating: a second initialize sent before the first one's answer is refused as well.
        self._initialized = True
        return (yield from super().lsp_initialize(params))
