"""Running a fill off the UI thread: the messages a run posts, and the loop that drains the sampler.

The sampler is a generator; a forward pass can take seconds on a CPU. :func:`drain_fill` runs inside a Textual
thread worker and turns the stream into messages, exactly one :class:`FillStep` per denoising step, which the
screen handles on the UI thread. Between steps it asks whether the worker was cancelled (a new run, the cancel
key, or the app quitting) and if so closes the generator, so the model is not called again.

Every message carries the ``run_id`` of the run that posted it: a cancelled run may still deliver a message or
two after a new run started, and the screen drops those.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from textual.message import Message

from ..engine.canvas import InfillCanvas, InfillResult
from ..errors import BadInputError
from .history import StepRecord
from .runner import DemoSettings, FillRunner, RunnerInfo

log = logging.getLogger(__name__)


class ModelReady(Message):
    """The runner finished loading; the side panel can name the model."""

    def __init__(self, info: RunnerInfo) -> None:
        super().__init__()
        self.info = info


class ModelFailed(Message):
    """The model could not be loaded; runs are impossible until the user restarts with another --model."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class FillMessage(Message):
    """Base of the per-run messages: ``run_id`` says which run posted it."""

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id


class FillStarted(FillMessage):
    """The canvas is laid out and the first step is about to be computed."""

    def __init__(self, run_id: int, canvas: InfillCanvas) -> None:
        super().__init__(run_id)
        self.canvas = canvas


class FillStep(FillMessage):
    """One denoising step finished (one message per step)."""

    def __init__(self, run_id: int, record: StepRecord) -> None:
        super().__init__(run_id)
        self.record = record


class FillFinished(FillMessage):
    """The sampler ran to the end; ``result`` holds the filled text."""

    def __init__(self, run_id: int, result: InfillResult, elapsed: float) -> None:
        super().__init__(run_id)
        self.result = result
        self.elapsed = elapsed


class FillCancelled(FillMessage):
    """The run was stopped between steps; what was revealed so far stays viewable."""

    def __init__(self, run_id: int, elapsed: float) -> None:
        super().__init__(run_id)
        self.elapsed = elapsed


class FillFailed(FillMessage):
    """The run could not start or crashed; ``error`` is one line for the user."""

    def __init__(self, run_id: int, error: str) -> None:
        super().__init__(run_id)
        self.error = error


def drain_fill(
    runner: FillRunner,
    text: str,
    settings: DemoSettings,
    *,
    run_id: int,
    post: Callable[[Message], object],
    is_cancelled: Callable[[], bool],
    clock: Callable[[], float] = time.perf_counter,
) -> str:
    """Run one fill to its end (or until cancelled), posting a message per step. Returns the final status.

    Called on a worker thread. ``post`` must be thread-safe (Textual's ``post_message`` is).
    """
    start = clock()
    try:
        stream = runner.stream(text, settings)
    except BadInputError as exc:
        post(FillFailed(run_id, str(exc)))
        return "failed"
    except Exception as exc:  # e.g. the model failed to load: report, do not crash the app
        log.debug("fill could not start", exc_info=True)
        post(FillFailed(run_id, f"{type(exc).__name__}: {exc}"))
        return "failed"
    started = False
    try:
        while True:
            if is_cancelled():
                post(FillCancelled(run_id, clock() - start))
                return "cancelled"
            try:
                canvas, event = next(stream)
            except StopIteration as stop:
                post(FillFinished(run_id, stop.value, clock() - start))
                return "done"
            if not started:
                post(FillStarted(run_id, canvas))
                started = True
            post(FillStep(run_id, StepRecord.from_event(event, clock() - start)))
    except BadInputError as exc:  # raised by the stream's first step (canvas layout)
        post(FillFailed(run_id, str(exc)))
        return "failed"
    except Exception as exc:  # a model failure must not kill the app: report it
        log.debug("fill failed", exc_info=True)
        post(FillFailed(run_id, f"{type(exc).__name__}: {exc}"))
        return "failed"
    finally:
        stream.close()  # cancels a generator that is still between steps; a no-op once it has ended
