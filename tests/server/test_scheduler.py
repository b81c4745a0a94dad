"""The scheduler on fake work: one model thread, cancel-previous per key, debounce, client cancellation between
steps, outdated jobs, callbacks."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from diffucoder_lsp.server.scheduler import Cancelled, Scheduler


def stepping(steps: int, delay: float, log: list):
    """Work that takes ``steps`` steps of ``delay`` seconds, checking should_stop between steps."""

    def work(should_stop):
        log.append(("start", threading.current_thread().name))
        for i in range(steps):
            if should_stop():
                log.append(("stopped", i))
                raise Cancelled("stopped")
            time.sleep(delay)
        log.append(("done", steps))
        return steps

    return work


@pytest.fixture
def scheduler():
    s = Scheduler()
    yield s
    s.shutdown()


async def test_work_runs_off_the_loop_on_one_model_thread(scheduler):
    log: list = []
    results = await asyncio.gather(*(scheduler.run(stepping(2, 0.001, log)) for _ in range(3)))
    assert results == [2, 2, 2]
    names = {name for kind, name in log if kind == "start"}
    assert len(names) == 1 and next(iter(names)).startswith("diffucoder-model")
    assert threading.current_thread().name not in names


async def test_a_new_job_with_the_same_key_stops_the_running_one(scheduler):
    log: list = []
    first = asyncio.ensure_future(scheduler.run(stepping(200, 0.01, log), key="doc"))
    await asyncio.sleep(0.1)
    second = await scheduler.run(stepping(1, 0.0, log), key="doc")
    with pytest.raises(Cancelled, match="superseded"):
        await first
    assert second == 1
    stopped = [i for kind, i in log if kind == "stopped"]
    assert stopped and stopped[0] < 50
    assert scheduler.stats["superseded"] == 1


async def test_other_keys_are_not_cancelled(scheduler):
    log: list = []
    a = asyncio.ensure_future(scheduler.run(stepping(5, 0.01, log), key="a"))
    b = asyncio.ensure_future(scheduler.run(stepping(5, 0.01, log), key="b"))
    assert await asyncio.gather(a, b) == [5, 5]


async def test_debounce_drops_a_job_superseded_while_waiting(scheduler):
    log: list = []
    first = asyncio.ensure_future(scheduler.run(stepping(1, 0.0, log), key="d", debounce_s=0.2))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(scheduler.run(stepping(1, 0.0, log), key="d", debounce_s=0.2))
    with pytest.raises(Cancelled):
        await first
    assert await second == 1
    assert [k for k, _ in log].count("start") == 1 and scheduler.stats["debounced"] == 1


async def test_client_cancellation_stops_the_model_between_steps(scheduler):
    log: list = []
    task = asyncio.ensure_future(scheduler.run(stepping(500, 0.01, log), key="c"))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 1.0  # the job had ~5 s of steps left: it stopped at the next one
    assert await scheduler.run(stepping(1, 0.0, log)) == 1  # served right after: the thread is free
    assert any(kind == "stopped" for kind, _ in log)


async def test_outdated_jobs_stop_and_queued_ones_never_start(scheduler):
    log: list = []
    version = {"v": 1}
    blocker = asyncio.ensure_future(scheduler.run(stepping(20, 0.01, log), key="x"))
    queued = asyncio.ensure_future(
        scheduler.run(stepping(5, 0.01, log), key="y", is_current=lambda: version["v"] == 1)
    )
    await asyncio.sleep(0.05)
    version["v"] = 2
    with pytest.raises(Cancelled, match="outdated"):
        await queued
    assert await blocker == 20
    assert [k for k, _ in log].count("start") == 1 and scheduler.stats["skipped"] == 1


async def test_callbacks_see_each_job():
    seen: list = []
    s = Scheduler(
        on_start=lambda job: seen.append(("start", job.label)),
        on_finish=lambda job, ms, err: seen.append(("finish", job.label, err is None, ms >= 0)),
    )
    try:
        await s.run(lambda stop: 1, label="one")
        with pytest.raises(ZeroDivisionError):
            await s.run(lambda stop: 1 / 0, label="two")
    finally:
        s.shutdown()
    assert seen == [
        ("start", "one"),
        ("finish", "one", True, True),
        ("start", "two"),
        ("finish", "two", False, True),
    ]
    with pytest.raises(Cancelled):
        await s.run(lambda stop: 1)


async def test_any_other_job_preempts_background_jobs_queued_or_running(scheduler):
    log: list = []
    running = asyncio.ensure_future(scheduler.run(stepping(200, 0.01, log), key="w1", background=True))
    await asyncio.sleep(0.1)
    queued = asyncio.ensure_future(
        scheduler.run(stepping(1, 0.0, log), key="w2", background=True, debounce_s=0.05)
    )
    await asyncio.sleep(0)
    assert await scheduler.run(stepping(1, 0.0, log), key="doc") == 1
    for job in (running, queued):
        with pytest.raises(Cancelled, match="preempted"):
            await job
    stopped = [i for kind, i in log if kind == "stopped"]
    assert len(stopped) == 1 and stopped[0] < 50  # the running one stopped at a check; the queued never ran
    assert scheduler.stats["preempted"] == 2
    # a background job does not preempt another one, and one submitted after a request runs
    results = await asyncio.gather(
        scheduler.run(stepping(2, 0.0, log), key="w3", background=True),
        scheduler.run(stepping(2, 0.0, log), key="w4", background=True),
    )
    assert results == [2, 2]


async def test_a_long_job_lets_interactive_jobs_run_between_its_steps(scheduler):
    """Fill All Holes must not starve completions in other files: they run at the long job's next step."""
    log: list = []
    finished: dict[str, float] = {}

    async def timed(name, coro):
        result = await coro
        finished[name] = time.perf_counter()
        return result

    long = asyncio.ensure_future(
        timed("fill", scheduler.run(stepping(40, 0.02, log), key="a.py", long=True, label="fill"))
    )
    await asyncio.sleep(0.1)
    assert scheduler.running is not None and scheduler.running.long
    start = time.perf_counter()
    quick = await timed("complete", scheduler.run(stepping(2, 0.01, []), key="b.py", label="complete"))
    waited = finished["complete"] - start
    assert (
        quick == 2 and waited < 0.3
    )  # one step of the fill (0.02 s) plus its own work, not the fill's ~0.7 s
    assert await long == 40 and finished["fill"] > finished["complete"]
    assert scheduler.stats["between_steps"] == 1 and scheduler.running is None and scheduler.outer is None


async def test_a_job_queued_behind_a_long_job_that_ends_still_runs(scheduler):
    """The long job may end before its next step check: the queued job then runs right after it, once."""
    runs: list = []

    def no_checks(should_stop):
        time.sleep(0.15)  # never calls should_stop
        return "fill"

    long = asyncio.ensure_future(scheduler.run(no_checks, key="a.py", long=True))
    await asyncio.sleep(0.05)
    quick = await scheduler.run(lambda stop: runs.append(1) or "done", key="b.py")
    assert quick == "done" and runs == [1] and await long == "fill"


async def test_an_interactive_job_inside_a_long_one_can_fail_or_be_cancelled(scheduler):
    log: list = []
    long = asyncio.ensure_future(scheduler.run(stepping(30, 0.02, log), key="a.py", long=True))
    await asyncio.sleep(0.05)

    def boom(stop):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await scheduler.run(boom, key="b.py")
    task = asyncio.ensure_future(scheduler.run(stepping(5, 0.01, []), key="c.py"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await long == 30  # the long job carried on through both


async def test_free_memory_goes_back_after_each_job_not_inside_a_long_one(scheduler, monkeypatch):
    """Between requests the allocator's free pages are handed back (engine/memory.py); an interactive job served
    inside a long job's steps does not trigger it (the long job is still running)."""
    import diffucoder_lsp.server.scheduler as sched

    calls: list = []
    monkeypatch.setattr(sched, "release_free_memory", lambda: calls.append(scheduler.running) or True)
    log: list = []
    await scheduler.run(stepping(1, 0.001, log))
    assert calls == [None]
    long = asyncio.ensure_future(scheduler.run(stepping(40, 0.01, log), long=True))
    await asyncio.sleep(0.05)
    assert await scheduler.run(stepping(1, 0.001, log)) == 1  # served between the long job's steps
    assert len(calls) == 1
    assert await long == 40
    assert len(calls) == 2 and calls[-1] is None


def test_release_free_memory_works_exactly_where_glibc_has_malloc_trim():
    import platform
    import sys

    from diffucoder_lsp.engine.memory import release_free_memory

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_free_memory() is glibc  # a no-op (False) elsewhere, never an error
