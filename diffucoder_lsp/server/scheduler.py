"""Scheduling model work off the event loop: one model thread, one job at a time, cancellation between steps.

* Inference never runs on the event loop: every job runs on a single model thread, so jobs never compete for
  the model (or its memory) and the loop stays free to read ``$/cancelRequest`` and new keystrokes.
* A new job with the same key (a document URI) cancels the previous one, queued or running.
* A job's work receives ``should_stop()``; the engine calls it between denoising steps and stops there (it closes
  the sampler generator). It turns true when the job was superseded, when the client cancelled the request
  (the awaiting task is cancelled: pygls then answers RequestCancelled at once, and the model thread gives up at
  the next step boundary), or when ``is_current()`` says the document moved on to a newer version.
* ``debounce_s``: a job waits this long before queuing; a newer job for the same key during the wait means this
  one never reaches the model.
* ``background`` jobs (context warming, speculative completions) give way: any other job submitted cancels every
  background job, queued or running (a running one stops at its next check, between layers).
* ``long`` jobs (Fill All Holes, Regenerate Selection: many holes, many steps) let interactive work through: a
  job submitted while a long one runs is run on the model thread at the long job's next step boundary (its
  ``should_stop`` check), instead of waiting behind all of it. A completion in another file during a 30 s fill
  answers in about its own time. Should the long job end first, the queued job still runs: nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ..engine.memory import release_free_memory

log = logging.getLogger(__name__)
T = TypeVar("T")


class Cancelled(Exception):
    """A job stopped before it finished (superseded, cancelled by the client, or outdated)."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class Job:
    def __init__(
        self,
        key: Hashable | None,
        work: Callable[[Callable[[], bool]], Any],
        is_current: Callable[[], bool] | None,
        label: str,
        background: bool = False,
        long: bool = False,
    ) -> None:
        self.key = key
        self.long = long
        self.work = work
        self.is_current = is_current
        self.label = label
        self.background = background
        self.reason: str | None = None
        self.created = time.perf_counter()
        self._stop = threading.Event()

    def cancel(self, reason: str) -> None:
        if not self._stop.is_set():
            self.reason = reason
            self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def should_stop(self) -> bool:
        if self._stop.is_set():
            return True
        if self.is_current is not None and not self.is_current():
            self.cancel("outdated")
            return True
        return False


class Scheduler:
    def __init__(
        self,
        on_start: Callable[[Job], None] | None = None,
        on_finish: Callable[[Job, float, BaseException | None], None] | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffucoder-model")
        self._latest: dict[Hashable, Job] = {}
        self._on_start = on_start
        self._on_finish = on_finish
        self.running: Job | None = None
        self._background: set[Job] = set()
        self.stats: Counter[str] = Counter()
        self._closed = False
        self.outer: Job | None = None  # a long job that is letting other jobs run inside its steps
        self._urgent: deque[tuple[Job, Future]] = deque()

    async def run(
        self,
        work: Callable[[Callable[[], bool]], T],
        *,
        key: Hashable | None = None,
        is_current: Callable[[], bool] | None = None,
        debounce_s: float = 0.0,
        label: str = "job",
        background: bool = False,
        long: bool = False,
    ) -> T:
        """Run ``work(should_stop)`` on the model thread; raises :class:`Cancelled` if it was stopped."""
        if self._closed:
            raise Cancelled("shutting down")
        job = Job(key, work, is_current, label, background, long)
        if background:
            self._background.add(job)
        else:
            for other in self._background:
                if not other.cancelled:
                    other.cancel("preempted")
                    self.stats["preempted"] += 1
        if key is not None:
            prev = self._latest.get(key)
            if prev is not None:
                prev.cancel("superseded")
                self.stats["superseded"] += 1
            self._latest[key] = job
        try:
            if debounce_s > 0:
                await asyncio.sleep(debounce_s)
                if job.cancelled:
                    self.stats["debounced"] += 1
            if job.should_stop():
                raise Cancelled(job.reason or "cancelled")
            loop = asyncio.get_running_loop()
            running = self.running
            if not background and not long and running is not None and running.long:
                return await self._run_between_steps(job, loop)
            return await loop.run_in_executor(self._executor, self._execute, job)
        except asyncio.CancelledError:
            job.cancel("cancelled by the client")
            self.stats["client_cancelled"] += 1
            raise
        finally:
            self._background.discard(job)
            if key is not None and self._latest.get(key) is job:
                del self._latest[key]

    async def _run_between_steps(self, job: Job, loop: asyncio.AbstractEventLoop) -> Any:
        """Queue ``job`` for the running long job's next step boundary; a drain task behind the long job runs
        it anyway if the long job ends first (whichever comes first takes it, once)."""
        done: Future = Future()
        self._urgent.append((job, done))
        self.stats["between_steps"] += 1
        loop.run_in_executor(self._executor, self._serve_urgent)
        return await asyncio.wrap_future(done)

    def _serve_urgent(self) -> None:
        """Run every queued interactive job now (on the model thread), resolving their futures."""
        while True:
            try:
                job, done = self._urgent.popleft()
            except IndexError:
                return
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(self._execute(job))
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                done.set_exception(exc)

    def _long_should_stop(self, job: Job) -> Callable[[], bool]:
        """A long job's step-boundary check: serve queued interactive jobs, then ask whether to stop."""

        def check() -> bool:
            if self._urgent:
                self.outer, self.running = job, None
                try:
                    self._serve_urgent()
                finally:
                    self.outer, self.running = None, job
            return job.should_stop()

        return check

    def _execute(self, job: Job) -> Any:
        if job.should_stop():
            self.stats["skipped"] += 1
            raise Cancelled(job.reason or "cancelled")
        self.running = job
        self.stats["started"] += 1
        start = time.perf_counter()
        error: BaseException | None = None
        if self._on_start is not None:
            self._on_start(job)
        try:
            return job.work(self._long_should_stop(job) if job.long else job.should_stop)
        except Cancelled as exc:
            error = exc
            self.stats["stopped"] += 1
            raise Cancelled(job.reason or exc.reason) from None  # why it was stopped, not where
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.running = self.outer if self.outer is not job else None
            if self.running is None:  # between requests: what the job freed goes back (see engine/memory.py)
                release_free_memory()
            if self._on_finish is not None:
                try:
                    self._on_finish(job, (time.perf_counter() - start) * 1000, error)
                except Exception:  # a status callback must never take the model thread down
                    log.exception("on_finish callback failed")

    def cancel(self, key: Hashable, reason: str = "cancelled") -> None:
        job = self._latest.get(key)
        if job is not None:
            job.cancel(reason)

    def shutdown(self) -> None:
        self._closed = True
        for job in list(self._latest.values()):
            job.cancel("shutting down")
        if self.running is not None:
            self.running.cancel("shutting down")
        self._executor.shutdown(wait=False, cancel_futures=True)
