"""What the server's feature modules need from the language server, as a narrow interface.

``actions`` (fill holes, regenerate a selection) and ``background`` (warming, speculation) work against the
:class:`ServerHost` protocol instead of importing ``app``: ``app`` builds the server and registers their
handlers, so an import the other way would close a cycle. Anything a feature module needs from the server is
named here, which also keeps that surface small and visible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from lsprotocol import types

from .cache import CompletionCache
from .documents import Document, DocumentStore
from .engine_client import EngineClient
from .postprocess import Completion
from .scheduler import Scheduler
from .settings import Settings


@dataclass(frozen=True)
class Answer:
    """A completion ready to be shown: the text, the cursor (code points) and the document it belongs to."""

    completion: Completion
    offset: int  # cursor, code points
    doc: Document


class ServerHost(Protocol):
    """The language server as the feature modules see it (``app.DiffuCoderServer`` implements it)."""

    settings: Settings
    documents: DocumentStore
    cache: CompletionCache
    scheduler: Scheduler
    engine: EngineClient
    last_uri: str | None
    encoding: str

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task: ...

    def show(self, kind: types.MessageType, text: str) -> None: ...

    def client_supports(self, path: str) -> bool: ...

    def usable_document(self, uri: str) -> Document | None: ...

    def is_current(self, uri: str, doc: Document, version: int | None) -> Callable[[], bool]: ...

    def span_at(self, prefix: str, suffix: str) -> tuple[str, int]: ...

    def position_to_offset(self, doc: Document, pos: types.Position) -> int: ...

    def offset_to_position(self, doc: Document, offset: int) -> types.Position: ...

    def workspace_apply_edit_async(self, params: types.ApplyWorkspaceEditParams) -> Any: ...
