"""What a backend accepts and how it batches: frozen, checked where built, the defaults documented in
docs/backend.md.

Every limit is there to keep one client from taking the server down for everybody else: a body or a context
too large for the model's memory, a request for thousands of holes or tokens, a queue that would only grow.
A request beyond a limit is refused at once with a one-line reason (400, or 413 for the body) instead of
failing on the GPU minutes later; a full queue answers 429 with ``Retry-After`` (the client should come back,
not give up).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..errors import BadInputError


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20  # a request body; a 512-token context is ~2 KB of code
    max_holes: int = 16  # holes in one /v1/infill text
    max_new_tokens: int = 2048  # mask tokens of one request, all holes together (auto holes count 48)
    max_context_tokens: int = 8192  # the context window a request may ask for (capped by the model's)
    max_n: int = 8  # OpenAI ``n``: completions of one prompt
    max_prompts: int = 8  # OpenAI ``prompt`` given as a list
    max_steps: int = 4096  # an explicit ``steps``
    max_queue: int = 256  # rows waiting for the model; beyond it, 429
    retry_after_s: int = 1  # what 429/503 tell a client to wait

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_holes",
            "max_new_tokens",
            "max_context_tokens",
            "max_n",
            "max_prompts",
            "max_steps",
            "max_queue",
            "retry_after_s",
        ):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class BackendConfig:
    """How the server listens and batches.

    ``max_batch``: rows denoised together in one pass. ``gather_ms``: how long the model thread waits after the
    first request of a batch for others to join it (a few milliseconds: far less than one step, enough for
    editors typing at the same moment). ``token``: the bearer token every request but ``/health`` must carry
    (None: no auth, allowed on a loopback address only). ``context_stores``: how many ``X-Request-Group``
    streams (editor documents) keep their last request's context keys/values for the next one (least recently
    used dropped first; 0: none, every request pays a full context pass)."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_batch: int = 16
    gather_ms: float = 5.0
    context_stores: int = 32
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise BadInputError(f"--port must be in 0..65535, got {self.port}")
        if not 1 <= self.max_batch <= 1024:
            raise BadInputError(f"--max-batch must be in 1..1024, got {self.max_batch}")
        if not 0 <= self.gather_ms <= 1000:
            raise BadInputError(f"--gather-ms must be in 0..1000, got {self.gather_ms}")
        if not 0 <= self.context_stores <= 4096:
            raise BadInputError(f"--context-stores must be in 0..4096, got {self.context_stores}")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise BadInputError("the token must be non-empty and contain no whitespace")
        if self.token is None and not is_loopback(self.host):
            raise BadInputError(
                f"binding {self.host} (not a loopback address) needs --token-file: anyone who can reach the "
                "port could otherwise use the GPU"
            )


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The token in a file (surrounding whitespace dropped); :class:`BadInputError` when unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read(4097).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(
            f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    if not token or len(token) > 4096 or any(c.isspace() for c in token):
        raise BadInputError(f"the token file {path} must hold one token (1-4096 characters, no whitespace)")
    return token
