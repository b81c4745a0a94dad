"""The backend's HTTP API on Starlette (served by uvicorn): routes, auth, body limits and error answers.

Routes: ``POST /v1/infill`` (``fill``'s record; ``"stream": true`` for server-sent events, one per step),
``POST /v1/completions`` (OpenAI-compatible fill in the middle), ``GET /v1/models``, ``GET /health`` (no auth:
load balancers probe it) and ``GET /metrics`` (Prometheus text). The API is documented in docs/backend.md.

Every answer that is not a result is one JSON object ``{"error": {"message", "type", "code"}}`` (OpenAI's
shape, so OpenAI clients show the message): 400 bad JSON or options (one line saying which field and why), 401
no or wrong bearer token, 413 body too large, 409 superseded by a newer request of the same
``X-Request-Group``, 429 queue full and 503 not serving (both with ``Retry-After``), 507 out of memory for this
request alone, 500 anything else. A client that disconnects cancels its request (see :mod:`.batcher`).

The event loop never runs the model: canvases are laid out on a worker thread (tokenizing a large context
takes milliseconds) and denoised on the batcher's thread; results come back through per-request queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..engine.batch import schedule_key
from ..engine.confidence import DEFAULT_STATISTIC, read_calibration
from ..engine.infill import DEFAULT_MARKER, layout
from ..errors import BadInputError
from ..server.context import defuse_special_tokens
from .batcher import Batcher, Job, QueueFull, Unavailable
from .config import BackendConfig
from .metrics import Metrics
from .records import canvas_event, completion_answer, completion_choice, infill_answer, step_event
from .schema import CompletionSpec, InfillSpec, parse_completion, parse_infill, parse_json

log = logging.getLogger(__name__)

KEEPALIVE_S = 0.25  # a comment line this often while a streamed request waits: the client sees it is alive
KINDS = {400: "bad_request", 401: "unauthorized", 409: "superseded", 413: "too_large", 429: "queue_full"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message.splitlines()[0] if message else "error"
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = KINDS.get(self.status, "out_of_memory" if self.status == 507 else "server_error")
        return {"error": {"message": self.message, "type": kind, "code": self.status}}


class Disconnected(Exception):
    """The client went away while its request was being served."""


class Backend:
    """The routes and what they share: the model, the batcher, the metrics."""

    def __init__(self, lm, config: BackendConfig, *, make_denoiser=None) -> None:
        self.lm = lm
        self.config = config
        self.metrics = Metrics()
        self.batcher = Batcher(lm, config, self.metrics, make_denoiser)
        self.metrics.gauges = {
            "diffucoder_queue_depth": self.batcher.queue_depth,
            "diffucoder_running_rows": self.batcher.running_rows,
            "diffucoder_context_stores": lambda: self.batcher.stored_contexts()[0],
            "diffucoder_context_store_bytes": lambda: self.batcher.stored_contexts()[1],
        }
        self.window = min(config.limits.max_context_tokens, lm.config.max_position_embeddings)
        self.calibration = read_calibration(getattr(lm, "path", None))
        self.statistic = self.calibration.statistic if self.calibration else DEFAULT_STATISTIC
        self.name = str(getattr(lm, "name", "diffucoder"))
        self.created = int(time.time())
        self.retry_after = {"Retry-After": str(config.limits.retry_after_s)}

    # --- plumbing -------------------------------------------------------------------------------------------

    def check_auth(self, request: Request) -> None:
        token = self.config.token
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            self.metrics.error("unauthorized")
            raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the body is {declared} bytes; this backend takes at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the body is over {limit} bytes, the most this backend takes")
            chunks.append(chunk)
        return b"".join(chunks)

    def submit(self, jobs: list[Job]) -> None:
        try:
            self.batcher.submit(jobs)
        except QueueFull as exc:
            self.metrics.error("queue_full")
            raise ApiError(429, f"the backend is busy: {exc}; retry shortly", self.retry_after) from exc
        except Unavailable as exc:
            raise ApiError(503, f"the backend is not serving: {exc}", self.retry_after) from exc

    def answer(self, endpoint: str, start: float, status: int, body, headers=None) -> Response:
        self.metrics.request(endpoint, status, time.perf_counter() - start)
        return JSONResponse(body, status_code=status, headers=headers)

    def fail(self, endpoint: str, start: float, exc: ApiError) -> Response:
        if exc.status in (400, 413):  # the others are counted where they happen (auth, queue, batcher)
            self.metrics.error(KINDS[exc.status])
        return self.answer(endpoint, start, exc.status, exc.body(), exc.headers)

    @staticmethod
    def queue_for(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int):
        """A job's ``deliver``: thread-safe, posts ``(index, kind, data)`` to the request's queue."""

        def deliver(kind: str, data: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(queue.put_nowait, (index, kind, data))

        return deliver

    async def results(self, request: Request, jobs: list[Job], queue: asyncio.Queue) -> list:
        """Every job's result, in order; :class:`ApiError` for a failed or cancelled job (the others are
        cancelled), :class:`Disconnected` (all cancelled) when the client leaves first."""
        watch = asyncio.ensure_future(_wait_disconnect(request))
        out: list = [None] * len(jobs)
        try:
            while any(r is None for r in out):
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    raise Disconnected
                index, kind, data = get.result()
                if kind == "done":
                    out[index] = data
                elif kind in ("error", "cancelled"):
                    raise _job_error(kind, data)
            return out
        except BaseException as exc:
            reason = "disconnected" if isinstance(exc, (Disconnected, asyncio.CancelledError)) else "failed"
            for job in jobs:
                self.batcher.cancel(job, reason)
            raise
        finally:
            watch.cancel()

    def job(self, canvas, spec_key: tuple, options, *, deliver, group, **kw) -> Job:
        return Job(
            canvas,
            spec_key + (schedule_key(options, canvas),),
            options=options,
            deliver=deliver,
            group=group,
            **kw,
        )

    # --- routes ---------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        ok = self.batcher.alive
        body = {
            "status": "ok" if ok else "unavailable",
            "model": self.name,
            "queue": self.batcher.queue_depth(),
            "running": self.batcher.running_rows(),
        }
        return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else self.retry_after)

    async def models(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            self.check_auth(request)
        except ApiError as exc:
            return self.fail("/v1/models", start, exc)
        entry = {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "diffucoder",
            "max_context_tokens": self.window,
            "max_batch": self.config.max_batch,
            "marker": DEFAULT_MARKER,
            "calibration": self.calibration.to_json() if self.calibration else None,
        }
        return self.answer("/v1/models", start, 200, {"object": "list", "data": [entry]})

    async def metrics_text(self, request: Request) -> Response:
        try:
            self.check_auth(request)
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def infill(self, request: Request) -> Response:
        endpoint, start = "/v1/infill", time.perf_counter()
        try:
            self.check_auth(request)
            spec = parse_infill(parse_json(await self.read_body(request)), self.config.limits, self.window)
            canvas = await run_in_threadpool(self._layout, spec)
            queue: asyncio.Queue = asyncio.Queue()
            job = self.job(
                canvas,
                spec.batch_key(),
                spec.options,
                deliver=self.queue_for(asyncio.get_running_loop(), queue, 0),
                group=_group(request),
                cache=spec.cache,
                refresh_every=spec.refresh_every,
                end_early=spec.end_early,
                end_at_newline=spec.end_at_newline,
                settle=_settle_tests(spec),
                want_steps=spec.stream,
            )
            self.submit([job])
        except BadInputError as exc:
            return self.fail(endpoint, start, ApiError(400, str(exc)))
        except ApiError as exc:
            return self.fail(endpoint, start, exc)
        if spec.stream:
            return _sse_response(self._infill_events(job, queue, spec, canvas, start))
        try:
            (result,) = await self.results(request, [job], queue)
        except Disconnected:
            return self.answer(endpoint, start, 499, {"error": {"message": "client went away"}})
        except ApiError as exc:
            return self.fail(endpoint, start, exc)
        return self.answer(endpoint, start, 200, infill_answer(result, self.lm, spec, self.statistic))

    def _layout(self, spec: InfillSpec):
        return layout(
            self.lm,
            spec.text,
            length=list(spec.length) if isinstance(spec.length, tuple) else spec.length,
            options=spec.options,
            marker=spec.marker,
            max_context_tokens=spec.context_tokens,
            prefix_share=spec.prefix_share,
        )

    async def _infill_events(self, job: Job, queue: asyncio.Queue, spec: InfillSpec, canvas, start: float):
        tok, status = self.lm.tokenizer, 499
        try:
            yield _event("canvas", canvas_event(canvas, tok))
            async for kind, data in _drain(queue):
                if kind == "keepalive":
                    yield ": waiting\n\n"
                    continue
                if kind == "step":
                    yield _event("step", step_event(data, tok))
                    continue
                if kind == "done":
                    status = 200
                    yield _event("done", infill_answer(data, self.lm, spec, self.statistic))
                else:
                    err = _job_error(kind, data)
                    status = err.status
                    yield _event("error", err.body())
                return
        finally:
            self.batcher.cancel(job, "disconnected")  # a no-op when it finished
            self.metrics.request("/v1/infill", status, time.perf_counter() - start)

    async def completions(self, request: Request) -> Response:
        endpoint, start = "/v1/completions", time.perf_counter()
        try:
            self.check_auth(request)
            spec = parse_completion(parse_json(await self.read_body(request)), self.config.limits)
            canvases = await run_in_threadpool(self._completion_canvases, spec)
            queue: asyncio.Queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            key = (
                spec.options,
                True,
                0,
                False,
            )  # as InfillSpec.batch_key: batches with the editors' requests
            jobs = [
                self.job(
                    canvases[i // spec.n],
                    key,
                    spec.options,
                    deliver=self.queue_for(loop, queue, i),
                    group=_group(request),
                    cache=True,
                    end_early=True,
                )
                for i in range(len(canvases) * spec.n)
            ]
            self.submit(jobs)
        except BadInputError as exc:
            return self.fail(endpoint, start, ApiError(400, str(exc)))
        except ApiError as exc:
            return self.fail(endpoint, start, exc)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        if spec.stream:
            return _sse_response(
                self._completion_events(request, jobs, queue, spec, canvases, request_id, start)
            )
        try:
            results = await self.results(request, jobs, queue)
        except Disconnected:
            return self.answer(endpoint, start, 499, {"error": {"message": "client went away"}})
        except ApiError as exc:
            return self.fail(endpoint, start, exc)
        return self.answer(endpoint, start, 200, self._completion_body(spec, canvases, results, request_id))

    def _completion_canvases(self, spec: CompletionSpec) -> list:
        """One canvas per prompt: prompt, a hole of ``max_tokens``, suffix. Text that spells a special token is
        defused, as the language server does, so a prompt can never add holes or end tokens of its own."""
        suffix = defuse_special_tokens(spec.suffix)
        return [
            layout(
                self.lm,
                defuse_special_tokens(p) + DEFAULT_MARKER + suffix,
                length=[spec.max_tokens],
                options=spec.options,
            )
            for p in spec.prompts
        ]

    def _completion_body(self, spec: CompletionSpec, canvases, results, request_id: str) -> dict:
        tok = self.lm.tokenizer
        choices, used = [], 0
        for i, result in enumerate(results):
            choice, n = completion_choice(result, tok, spec, i)
            choices.append(choice)
            used += n
        prompt = sum(len(c.ids) - sum(b - a for a, b in c.hole_spans) for c in canvases)
        return completion_answer(choices, self.name, prompt, used, request_id)

    async def _completion_events(self, request, jobs, queue, spec, canvases, request_id, start):
        """OpenAI streaming: a diffusion fill is known only at its end, so each choice is one chunk, then
        ``[DONE]``; comment lines keep the connection alive meanwhile."""
        status, results = 499, [None] * len(jobs)
        try:
            async for index, kind, data in _drain(queue, with_index=True):
                if kind == "keepalive":
                    yield ": waiting\n\n"
                elif kind == "done":
                    results[index] = data
                    if all(r is not None for r in results):
                        break
                elif kind in ("error", "cancelled"):
                    err = _job_error(kind, data)
                    status = err.status
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
            body = self._completion_body(spec, canvases, results, request_id)
            for choice in body["choices"]:
                chunk = {k: body[k] for k in ("id", "object", "created", "model")}
                yield f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n"
            yield "data: [DONE]\n\n"
            status = 200
        finally:
            for job in jobs:
                self.batcher.cancel(job, "disconnected")
            self.metrics.request("/v1/completions", status, time.perf_counter() - start)


def build_app(lm, config: BackendConfig, *, make_denoiser=None) -> Starlette:
    """The ASGI app serving ``lm``; the model thread runs while the app's lifespan does."""
    backend = Backend(lm, config, make_denoiser=make_denoiser)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        backend.batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(backend.batcher.stop)

    routes = [
        Route("/health", backend.health, methods=["GET"]),
        Route("/metrics", backend.metrics_text, methods=["GET"]),
        Route("/v1/models", backend.models, methods=["GET"]),
        Route("/v1/infill", backend.infill, methods=["POST"]),
        Route("/v1/completions", backend.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.backend = backend
    return app


# --- helpers ----------------------------------------------------------------------------------------------


def _group(request: Request) -> str | None:
    group = request.headers.get("x-request-group", "").strip()
    return group[:512] or None


def _job_error(kind: str, data: Any) -> ApiError:
    if kind == "cancelled":
        if data == "superseded":
            return ApiError(409, "superseded by a newer request of the same X-Request-Group")
        return ApiError(503, f"cancelled: {data}")
    status, message = data
    return ApiError(status, message)


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _sse_response(events) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: pass events through at once
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _drain(queue: asyncio.Queue, with_index: bool = False):
    """A request queue's items as (kind, data), or (index, kind, data); a ``keepalive`` item whenever nothing
    came for ``KEEPALIVE_S`` (a streaming caller sends a comment line for it). Stops when the consumer does."""
    get: asyncio.Future | None = None
    try:
        while True:
            if get is None:
                get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({get}, timeout=KEEPALIVE_S)
            if not done:
                yield (None, "keepalive", None) if with_index else ("keepalive", None)
                continue
            index, kind, data = get.result()
            get = None
            yield (index, kind, data) if with_index else (kind, data)
    finally:
        if get is not None:
            get.cancel()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _settle_tests(spec) -> tuple | None:
    """``settle``: the hole stops once what it wrote decides the editor's cut, as the language server's local
    completions do (the text around the hole is what the request sent: the client's context window)."""
    if not spec.settle:
        return None
    from ..server.postprocess import settled

    prefix, suffix = spec.text.split(spec.marker)
    return (lambda written: settled(written, prefix, suffix),)
