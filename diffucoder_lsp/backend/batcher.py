"""The model thread: requests from many clients gathered into padded batches, denoised step by step.

One thread owns the model. HTTP handlers (on the event loop) lay out each request's canvas and :meth:`submit`
it as one or more :class:`Job` rows; the thread takes the oldest waiting row, waits ``gather_ms`` for others
that may share its batch (same sampling options: :meth:`InfillSpec.batch_key` and
:func:`~diffucoder_lsp.engine.batch.schedule_key`), and runs up to ``max_batch`` of them through
:func:`~diffucoder_lsp.engine.batch.infill_batch`. Each row's result goes back the step it is finished; rows
that arrive meanwhile wait for the next batch (a running batch's cached keys/values cannot take new rows).

Cancellation: a job is cancelled when its client disconnects or a newer request with the same
``X-Request-Group`` arrives (one group per editor document: the user typed on, the old completion is useless).
A waiting job just leaves the queue; a running one is retired from its batch at the next step, so it costs no
more forward-pass work, and a batch whose rows are all gone stops at once. Its handler is told immediately.

Context reuse: the requests of one ``X-Request-Group`` (an editor document) come one keystroke apart and share
almost all of their context, so the thread keeps each group's last canvas and its keys/values (a
:class:`~diffucoder_lsp.engine.reuse.ContextStore`, the language server's in-process reuse) for the group's
next request, ``context_stores`` groups at most, the least recently used dropped first. A batch starts each row
from its own group's store (:mod:`~diffucoder_lsp.engine.batch_reuse`). The stores are a cache: a request
served by another backend, or after its group's store was dropped, pays a full context pass and gets an
equivalent answer.

Failures: out of memory (on a GPU: a batch too wide for what is free) splits the batch in two and runs the
halves, down to single rows; a single row that still does not fit answers 507 and the thread goes on serving.
A row that already streamed steps cannot be replayed and answers 507 too. Any other exception fails the rows
of that batch with 500 (logged with its traceback); the thread never dies of a request.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

from ..engine.batch import BatchRow, infill_batch
from ..engine.cache import CachedContextDenoiser
from ..engine.infill import InfillCanvas
from ..engine.memory import release_free_memory
from ..engine.reuse import ContextStore
from .config import BackendConfig
from .metrics import Metrics

log = logging.getLogger(__name__)

# what a job's ``deliver`` receives: ("step", RowStep), ("done", InfillResult), ("error", (status, message)),
# ("cancelled", reason)
Deliver = Callable[[str, Any], None]


class QueueFull(Exception):
    """More rows wait than ``max_queue``: the client should retry later (429)."""


class Unavailable(Exception):
    """The model thread is stopping or gone (503)."""


class Job:
    """One canvas row: what to denoise, with which options, and where its events go (thread-safe)."""

    def __init__(
        self,
        canvas: InfillCanvas,
        key: Hashable,
        *,
        options,
        cache: bool,
        refresh_every: int = 0,
        end_early: bool | None = None,
        end_at_newline: bool = False,
        settle: tuple | None = None,
        deliver: Deliver,
        group: str | None = None,
        want_steps: bool = False,
    ) -> None:
        self.canvas = canvas
        self.key = key
        self.options = options
        self.cache = cache
        self.refresh_every = refresh_every
        self.end_early = end_early
        self.end_at_newline = end_at_newline
        self.settle = settle  # per hole, as BatchRow takes it
        self.deliver = deliver
        self.group = group
        self.want_steps = want_steps
        self.cancelled: str | None = None
        self.finished = False
        self.sent_steps = False
        self.created = time.perf_counter()

    @property
    def open(self) -> bool:
        return not self.finished and self.cancelled is None


def is_oom(exc: BaseException) -> bool:
    """Whether an exception is the device running out of memory (CUDA, MPS or the CPU allocator)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return "outofmemory" in type(exc).__name__.lower() or "out of memory" in text


class Batcher:
    def __init__(
        self,
        lm,
        config: BackendConfig,
        metrics: Metrics,
        make_denoiser: Callable[[Job], Any] | None = None,
    ) -> None:
        self.lm = lm
        self.config = config
        self.metrics = metrics
        self.make_denoiser = make_denoiser
        self._stores: OrderedDict[str, ContextStore] = OrderedDict()  # per group, least recently used first
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._groups: dict[str, list[Job]] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        tok = lm.tokenizer
        self._newline_ends = tuple(sorted(tok.stop_ids | tok.newline_ids))

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="diffucoder-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            left = [j for j in [*self._pending, *self._running] if j.open]
            self._pending.clear()
            for job in left:  # running rows are retired at the next step
                job.cancelled = "shutting down"
            self._cond.notify_all()
        for job in left:
            job.deliver("error", (503, "the backend is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def queue_depth(self) -> int:
        return len(self._pending)

    def running_rows(self) -> int:
        return sum(1 for j in self._running if j.open)

    # --- from the event loop --------------------------------------------------------------------------------

    def submit(self, jobs: list[Job]) -> None:
        """Queue the rows of one request; a newer request of the same group supersedes the older ones."""
        with self._cond:
            if not self.alive:
                raise Unavailable("the model thread is not running")
            if len(self._pending) + len(jobs) > self.config.limits.max_queue:
                raise QueueFull(
                    f"{len(self._pending)} rows are waiting (limit {self.config.limits.max_queue})"
                )
            for group in {j.group for j in jobs if j.group}:
                for old in self._groups.pop(group, []):
                    self._cancel_locked(old, "superseded")
                self._groups[group] = [j for j in jobs if j.group == group]
            self._pending.extend(jobs)
            self._cond.notify_all()

    def cancel(self, job: Job, reason: str) -> None:
        with self._cond:
            self._cancel_locked(job, reason)

    def _cancel_locked(self, job: Job, reason: str) -> None:
        if not job.open:
            return
        job.cancelled = reason
        try:
            self._pending.remove(job)
        except ValueError:
            pass  # running: the model thread retires it at the next step
        self._forget(job)
        job.deliver("cancelled", reason)
        self.metrics.error(reason if reason in ("superseded", "disconnected") else "cancelled")

    def _forget(self, job: Job) -> None:
        if job.group and job in self._groups.get(job.group, ()):
            self._groups[job.group].remove(job)
            if not self._groups[job.group]:
                del self._groups[job.group]

    # --- the model thread -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._run(jobs)
            except BaseException:  # never let the thread die of one batch
                log.exception("batch failed outside the engine")
                self._fail([j for j in jobs if j.open], 500, "internal error in the batcher")
            finally:
                with self._cond:
                    for job in jobs:
                        self._forget(job)
                    self._running = []
                release_free_memory()  # what the batch freed goes back (see engine/memory.py)

    def _take(self) -> list[Job] | None:
        """The oldest waiting row and up to ``max_batch - 1`` more of its batch key, after gathering."""
        gather = self.config.gather_ms / 1000
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._pending[0]
            deadline = first.created + gather
            while not self._stopping:
                same = sum(1 for j in self._pending if j.key == first.key)
                wait = deadline - time.perf_counter()
                if same >= self.config.max_batch or wait <= 0 or first.cancelled:
                    break
                self._cond.wait(wait)
            taken = [j for j in self._pending if j.key == first.key and j.open][: self.config.max_batch]
            for job in taken:
                self._pending.remove(job)
            self._running = taken
            return taken

    def _denoiser(self, jobs: list[Job]):
        head = jobs[0]
        if self.make_denoiser is not None:
            return self.make_denoiser(head)
        if not head.cache:
            return None
        stores = self._stores_for(jobs)
        return CachedContextDenoiser(self.lm.model, head.refresh_every, stores=stores)

    def _stores_for(self, jobs: list[Job]) -> list[ContextStore | None] | None:
        """Each row's group store (made on first use, marked most recently used), or None for every row when
        context reuse is off; a row without a group gets none. Least recently used groups beyond
        ``context_stores`` are dropped (the rows of this batch were just used, so they stay)."""
        cap = self.config.context_stores
        if cap <= 0 or not any(j.group for j in jobs):
            return None
        out: list[ContextStore | None] = []
        for job in jobs:
            if not job.group:
                out.append(None)
                continue
            with self._cond:
                store = self._stores.pop(job.group, None) or ContextStore()
                self._stores[job.group] = store
            out.append(store)
        with self._cond:
            while len(self._stores) > max(cap, len(jobs)):
                self._stores.popitem(last=False)
        return out

    def stored_contexts(self) -> tuple[int, int]:
        """(groups with a stored context, bytes they hold): what ``/metrics`` reports."""
        with self._cond:
            stores = list(self._stores.values())
        return sum(1 for s in stores if s.entry is not None), sum(s.nbytes for s in stores)

    def _run(self, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if j.open]
        if not jobs:
            return
        head = jobs[0]
        self.metrics.batch(len(jobs))
        try:
            denoiser = self._denoiser(jobs)
            gen = infill_batch(
                self.lm,
                [BatchRow(j.canvas, j.end_early, j.settle) for j in jobs],
                options=head.options,
                denoiser=denoiser,
                end_ids=self._newline_ends if head.end_at_newline else None,
            )
            retire: set[int] | None = None
            first = True
            while True:
                try:
                    steps = gen.send(retire)
                except StopIteration:
                    break
                if first and isinstance(denoiser, CachedContextDenoiser):
                    self.metrics.context(denoiser.tokens_processed, denoiser.reused_tokens)
                first = False
                self.metrics.step(sum(len(s.tokens) for s in steps))
                for s in steps:
                    job = jobs[s.row]
                    if not job.open:
                        continue
                    if job.want_steps:
                        job.sent_steps = True
                        job.deliver("step", s)
                    if s.result is not None:
                        job.finished = True
                        job.deliver("done", s.result)
                retire = {i for i, j in enumerate(jobs) if j.cancelled is not None}
                if not any(j.open for j in jobs):
                    gen.close()  # every row finished or left: stop between steps
                    break
        except Exception as exc:  # noqa: BLE001 - a failing batch must not take the thread down
            self._failed(jobs, exc)

    def _failed(self, jobs: list[Job], exc: Exception) -> None:
        left = [j for j in jobs if j.open]
        if not is_oom(exc):
            log.error("batch of %d failed: %s: %s", len(jobs), type(exc).__name__, exc, exc_info=exc)
            self.metrics.error("internal")
            self._fail(left, 500, f"internal error: {type(exc).__name__}: {exc}")
            return
        self.metrics.error("oom")
        _free_memory()
        streamed = [j for j in left if j.sent_steps]
        self._fail(
            streamed, 507, "out of memory while denoising; the steps already sent cannot be replayed: retry"
        )
        retry = [j for j in left if not j.sent_steps]
        if len(jobs) == 1:
            self._fail(
                retry,
                507,
                "out of memory: this request does not fit on its own; send less context or fewer tokens",
            )
            return
        log.warning("out of memory with a batch of %d rows: splitting it", len(jobs))
        half = (len(retry) + 1) // 2
        for part in (retry[:half], retry[half:]):
            if part:
                self._run(part)

    def _fail(self, jobs: list[Job], status: int, message: str) -> None:
        for job in jobs:
            if job.open:
                job.finished = True
                job.deliver("error", (status, message))


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing is best effort
        log.debug("could not empty the CUDA cache", exc_info=True)
