"""The language server's model when the ``model`` setting is a backend's URL (``http(s)://host:port``).

:class:`~diffucoder_lsp.server.engine_client.EngineClient` holds a :class:`RemoteModel` where it would hold a
loaded checkpoint, and asks it for the three things it otherwise asks the engine: token counts (for the context
budget), fills, and the model's calibration (for the confidence gate). Everything else stays in the language
server: the context around the cursor, the completion cache, debouncing, post-processing.

* Fills go to ``/v1/infill`` with the settings' decoding options, streamed, so that the scheduler's
  cancellation (a newer keystroke, a closed document) closes the connection between denoising steps and the
  backend drops the row from its batch. ``X-Request-Group`` is this server's id plus the document: a newer
  request for the same document supersedes an older one still waiting there.
* Token counts are estimated from characters (one token per ``CHARS_PER_TOKEN`` characters). The context is
  cut to the budget by that estimate; the backend then cuts it exactly, at line boundaries with the same
  prefix share, to the window the request asks for. A round trip per line of context would cost more than the
  completion.
* Warming and context reuse are local optimizations with nothing to keep here: the backend keeps no session
  state (so that any backend behind a load balancer can answer any request). They are off.

Torch is never imported on this path: tests/backend/test_client_without_torch.py runs the server without it.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..engine.confidence import Calibration
from ..engine.remote import BackendError, RemoteBackend, RemoteConfig
from .results import Fill
from .scheduler import Cancelled
from .settings import Settings

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.5  # code tokenizers average 3-4 characters a token; the backend cuts exactly anyway


class RemoteModel:
    """A backend, as the language server's model."""

    def __init__(self, url: str, token: str | None, transport=None) -> None:
        self.client = RemoteBackend(RemoteConfig(url, token), transport=transport)
        self.url = self.client.url
        self.device = self.url
        self.name = self.url
        self.path = None
        self.calibration: Calibration | None = None
        self.group_prefix = uuid.uuid4().hex[:16]  # two editors may have the same file path open

    def connect(self) -> RemoteModel:
        """Ask the backend what it serves; :class:`BackendError` when it cannot be reached or refuses."""
        info = self.client.model_info()
        self.name = str(info.get("id") or self.url)
        raw = info.get("calibration")
        if raw is not None:
            try:
                self.calibration = Calibration.from_json(raw)
            except ValueError as exc:
                log.warning("ignoring the backend's calibration: %s", exc)
        return self

    def close(self) -> None:
        self.client.close()

    @staticmethod
    def count_tokens(text: str) -> int:
        return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0

    def infill(
        self,
        text: str,
        lengths: Sequence[int],
        settings: Settings,
        should_stop: Callable[[], bool],
        window: int,
        stream: str | None,
        end_at_newline: bool,
        statistic: str,
        settle: bool = False,
    ) -> Fill:
        """Fill ``text`` (holes written as ``<|mask|>``): each hole's text cut at its first stop token, and the
        first hole's score under ``statistic``. :class:`Cancelled` when ``should_stop`` said stop first, or a
        newer request of the same document superseded this one."""
        body = request_body(text, lengths, settings, window, end_at_newline, statistic, settle)
        group = f"{self.group_prefix}:{stream}" if stream else None
        try:
            record = self.client.infill(body, should_stop=should_stop, group=group)
        except BackendError as exc:
            if exc.status == 409:  # superseded: a newer request of this document took over
                raise Cancelled("superseded by a newer request") from exc
            raise
        if record is None:
            raise Cancelled("stopped between denoising steps")
        holes = record.get("holes") or []
        if len(holes) != len(lengths):
            raise BackendError(f"the backend answered {len(holes)} holes for {len(lengths)}")
        score = holes[0].get("confidence_score")
        return Fill(
            [str(h.get("text", "")) for h in holes],
            int(record.get("steps", 0)),
            float(record.get("elapsed_ms", 0.0)),
            confidence=float(score)
            if isinstance(score, (int, float)) and not isinstance(score, bool)
            else None,
        )


def request_body(
    text: str,
    lengths: Sequence[int],
    s: Settings,
    window: int,
    end_at_newline: bool,
    statistic: str,
    settle: bool = False,
) -> dict[str, Any]:
    """The ``/v1/infill`` body that decodes as :meth:`EngineClient.infill` would in-process. ``settle``: the
    one hole stops once the editor's cut of it is decided (a block completion)."""
    body = {
        "text": text,
        "length": list(lengths),
        "decoding": "plain",  # every option below is explicit: the settings, not a mode's defaults
        "steps": s.steps,
        "tokens_per_step": s.tokens_per_step,
        "alg": s.alg,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
        "eos_penalty": s.eos_penalty,
        "threshold": s.threshold,
        "entropy_bound": s.entropy_bound,
        "block_size": s.decoding_block() or 0,
        "cache": s.context_cache,
        "refresh_every": s.cache_refresh_every,
        "end_early": "all" if s.end_early else False,
        "end_at_newline": end_at_newline,
        "context_tokens": window,
        "prefix_share": s.prefix_share,
        "raw": True,
        "cut_at_stop": True,
        "confidence_statistic": statistic,
    }
    if settle:
        body["settle"] = True
    return body
