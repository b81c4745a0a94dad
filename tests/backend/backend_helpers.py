"""Starting a backend for a test, and a denoiser that a test can slow down, count or make run out of memory."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import uvicorn

from diffucoder_lsp.backend.app import build_app
from diffucoder_lsp.backend.config import BackendConfig
from diffucoder_lsp.engine.cache import CachedContextDenoiser
from diffucoder_lsp.engine.denoiser import FullCanvasDenoiser


@contextmanager
def running_backend(lm, config: BackendConfig | None = None, make_denoiser=None):
    """A backend on 127.0.0.1 at a free port; yields ``.url`` and ``.backend`` (the routes' shared state)."""
    app = build_app(lm, config or BackendConfig(port=0), make_denoiser=make_denoiser)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the backend did not start"
        time.sleep(0.01)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{sock.getsockname()[1]}", backend=app.state.backend)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


class OutOfMemoryError(RuntimeError):
    """What torch raises when CUDA runs out of memory (same name, same message)."""


class TestDenoisers:
    """``make_denoiser`` for a backend: the real denoiser behind a wrapper that records each call's batch
    size, can hold every call until ``release`` is set, and raises out-of-memory when ``oom(x)`` says so (``x``
    the canvases of the rows still running)."""

    __test__ = False

    def __init__(self, lm, oom=None, hold: bool = False) -> None:
        self.lm = lm
        self.oom = oom or (lambda x: False)
        self.calls: list[int] = []  # rows of every call, all batches together
        self.batches: list[list[int]] = []  # the same, one list per batch (per denoiser made)
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.entered = threading.Event()

    def __call__(self, job):
        inner = CachedContextDenoiser(self.lm.model) if job.cache else FullCanvasDenoiser(self.lm.model)
        outer = self
        mine: list[int] = []
        self.batches.append(mine)

        class Wrapped:
            @property
            def forward_passes(self):
                return inner.forward_passes

            def __call__(self, x, valid, masked):
                rows = int(masked.any(1).sum())
                outer.calls.append(rows)
                mine.append(rows)
                outer.entered.set()
                if not outer.release.wait(30):
                    raise TimeoutError("the test never released the denoiser")
                if outer.oom(x[masked.any(1)]):
                    raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return inner(x, valid, masked)

        return Wrapped()
