"""A client of the HTTP backend (``diffucoder backend``): the model on another machine, reached by URL.

Where a model is named, ``http://host:port`` or ``https://host[:port][/prefix]`` names a backend instead of a
checkpoint: the language server's ``model`` setting, ``diffucoder fill --model`` and ``diffucoder demo --model``
all come here. The bearer token is the caller's (a setting) or ``DIFFUCODER_TOKEN``.

This module must never import torch, directly or through the engine: a laptop that only talks to a backend
runs the language server without the model stack (tests/backend/test_client_without_torch.py checks it).

Fills go to ``POST /v1/infill``; with ``should_stop`` or ``on_event`` the request is streamed (server-sent
events, one per denoising step) so that the caller can stop between steps: closing the connection is how a
request is cancelled, and the backend drops it from its batch at the next step. While a request waits in the
backend's queue the stream carries keep-alive comments, so a caller's stop is seen within a fraction of a
second even then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import BadInputError

TOKEN_ENV = "DIFFUCODER_TOKEN"
SCHEMES = ("http://", "https://")


def is_url(model: str | None) -> bool:
    """Whether a model name is a backend's URL rather than a checkpoint."""
    return isinstance(model, str) and model.strip().lower().startswith(SCHEMES)


def check_url(url: str) -> str:
    """The backend's base URL without a trailing slash; :class:`BadInputError` when it is not one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInputError(f"not a backend URL (expected http(s)://host:port): {url[:200]!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise BadInputError(f"bad port in backend URL {url[:200]!r}") from None
    if parts.query or parts.fragment:
        raise BadInputError(f"a backend URL has no query or fragment: {url[:200]!r}")
    return url.strip().rstrip("/")


class BackendError(RuntimeError):
    """The backend answered with an error, or could not be reached. ``status`` is the HTTP status (0: no
    answer); ``retry_after`` the seconds it asked to wait (429/503), when it said."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class RemoteConfig:
    """Where the backend is and how long to wait for it."""

    url: str
    token: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0  # one fill of a large model on a busy backend


class RemoteBackend:
    """A thread-safe client of one backend (an ``httpx.Client`` keeps its connections alive)."""

    def __init__(self, config: RemoteConfig, transport=None) -> None:
        import httpx

        self.url = check_url(config.url)
        token = config.token if config.token is not None else os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    # --- plain requests -------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def models(self) -> dict[str, Any]:
        return self._json("GET", "/v1/models")

    def model_info(self) -> dict[str, Any]:
        """The one model this backend serves (``/v1/models``' first entry)."""
        data = self.models().get("data")
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise BackendError(f"{self.url}/v1/models lists no model")
        return data[0]

    def _json(self, method: str, path: str, body: dict | None = None, headers=None) -> dict[str, Any]:
        import httpx

        try:
            response = self._client.request(method, self.url + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach the backend at {self.url}: {_reason(exc)}") from exc
        if response.status_code >= 400:
            raise _error(response, response.text)
        try:
            return response.json()
        except ValueError as exc:
            raise BackendError(f"{self.url}{path} answered something that is not JSON") from exc

    # --- fills ----------------------------------------------------------------------------------------------

    def infill(
        self,
        body: dict[str, Any],
        *,
        should_stop: Callable[[], bool] | None = None,
        on_event: Callable[[str, dict], None] | None = None,
        group: str | None = None,
    ) -> dict[str, Any] | None:
        """``POST /v1/infill``: the backend's ``fill --json`` record, or None when ``should_stop`` said stop
        (the connection is closed, so the backend drops the request). ``on_event(kind, data)`` sees every
        server-sent event (``canvas``, ``step``) of a streamed request. ``group``: the ``X-Request-Group`` a
        newer request of the same group supersedes this one in."""
        headers = {"X-Request-Group": group} if group else None
        if should_stop is None and on_event is None:
            return self._json("POST", "/v1/infill", {**body, "stream": False}, headers)
        events = self.stream(body, headers=headers)
        try:
            for kind, data in events:
                if kind == "done":
                    return data
                if kind == "error":
                    raise error_from_event(data)
                if on_event is not None and kind != "keepalive":
                    on_event(kind, data)
                if should_stop is not None and should_stop():
                    return None
        finally:
            events.close()  # closes the connection now: the backend drops the request at its next step
        raise BackendError(f"the backend at {self.url} closed the stream before the fill ended")

    def stream(self, body: dict[str, Any], headers=None) -> Iterator[tuple[str, dict]]:
        """``POST /v1/infill`` with ``stream: true``: (event, data) pairs as they come, keep-alives included
        as ``("keepalive", {})``. Leaving the loop closes the connection."""
        import httpx

        try:
            with self._client.stream(
                "POST", self.url + "/v1/infill", json={**body, "stream": True}, headers=headers
            ) as response:
                if response.status_code >= 400:
                    raise _error(response, response.read().decode("utf-8", "replace"))
                yield from parse_sse(response.iter_lines())
        except httpx.HTTPError as exc:
            raise BackendError(f"lost the backend at {self.url}: {_reason(exc)}") from exc


def parse_sse(lines) -> Iterator[tuple[str, dict]]:
    """Server-sent events from text lines: (event name, parsed JSON data); a comment line is a keep-alive."""
    kind, data = "message", []
    for line in lines:
        if line == "":
            if data:
                try:
                    yield kind, json.loads("\n".join(data))
                except ValueError as exc:
                    raise BackendError("the backend sent an event that is not JSON") from exc
            kind, data = "message", []
        elif line.startswith(":"):
            yield "keepalive", {}
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _error(response, text: str) -> Exception:
    """The exception for an error answer: 400 is the caller's bad input, the rest a backend error."""
    message = text.strip()[:300]
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    if response.status_code == 400:
        return BadInputError(message)
    retry = response.headers.get("Retry-After")
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    return BackendError(
        f"backend answered {response.status_code}: {message}", response.status_code, retry_after
    )


def error_from_event(data: dict) -> Exception:
    err = data.get("error") if isinstance(data, dict) else None
    err = err if isinstance(err, dict) else {}
    status = err.get("code") if isinstance(err.get("code"), int) else 500
    message = str(err.get("message") or "the backend failed")
    if status == 400:
        return BadInputError(message)
    return BackendError(f"backend answered {status}: {message}", status)
