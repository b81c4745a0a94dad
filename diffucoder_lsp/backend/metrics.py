"""What ``GET /metrics`` reports, in the Prometheus text format (version 0.0.4), written by hand.

The set is small and fixed, so a client library would add a dependency for a few lines of formatting:

* ``diffucoder_requests_total{endpoint, status}``: answered requests.
* ``diffucoder_request_seconds{endpoint}``: latency histogram, from the body read to the last byte queued.
* ``diffucoder_batch_rows``: histogram of the rows each batch started with (how well batching works).
* ``diffucoder_queue_depth`` / ``diffucoder_running_rows``: gauges, read when scraped; so are
  ``diffucoder_context_stores`` / ``diffucoder_context_store_bytes`` (editor documents whose last context is
  kept for their next request, and the memory it holds).
* ``diffucoder_errors_total{kind}``: failures by kind (``oom``, ``internal``, ``bad_request``, ``queue_full``,
  ``unauthorized``, ``cancelled``, ``superseded``).
* ``diffucoder_steps_total``, ``diffucoder_tokens_total``, ``diffucoder_batches_total``: work done;
  ``diffucoder_context_computed_tokens_total`` / ``diffucoder_context_reused_tokens_total``: canvas positions
  the first passes computed, and those taken from stored contexts instead (how well context reuse works).

Updated from the event loop and the model thread alike, hence the lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [
            f'{name}_bucket{{{labels}{sep}le="{_num(b)}"}} {c}'
            for b, c in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{suffix} {_num(self.sum)}")
        out.append(f"{name}_count{suffix} {self.total}")
        return out


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.errors: Counter[str] = Counter()
        self.steps = 0
        self.tokens = 0
        self.batches = 0
        self.context_tokens = 0  # canvas positions whose keys/values a batch's first call computed
        self.reused_tokens = 0  # ... and those it took from a group's stored context instead
        self.gauges: dict[str, Callable[[], float]] = {}

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.latency.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def batch(self, rows: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_rows.observe(rows)

    def step(self, tokens: int) -> None:
        with self._lock:
            self.steps += 1
            self.tokens += tokens

    def context(self, computed: int, reused: int) -> None:
        with self._lock:
            self.context_tokens += computed
            self.reused_tokens += reused

    def render(self) -> str:
        with self._lock:
            out = [
                "# HELP diffucoder_requests_total Requests answered, by endpoint and HTTP status.",
                "# TYPE diffucoder_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f'diffucoder_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            out += [
                "# HELP diffucoder_request_seconds Request latency in seconds.",
                "# TYPE diffucoder_request_seconds histogram",
            ]
            for endpoint, hist in sorted(self.latency.items()):
                out += hist.lines("diffucoder_request_seconds", f'endpoint="{endpoint}"')
            out += [
                "# HELP diffucoder_batch_rows Rows a batch started with.",
                "# TYPE diffucoder_batch_rows histogram",
                *self.batch_rows.lines("diffucoder_batch_rows"),
                "# HELP diffucoder_errors_total Failed or refused requests, by kind.",
                "# TYPE diffucoder_errors_total counter",
            ]
            for kind, n in sorted(self.errors.items()):
                out.append(f'diffucoder_errors_total{{kind="{kind}"}} {n}')
            for name, value, help_text in (
                ("diffucoder_batches_total", self.batches, "Batches run."),
                ("diffucoder_steps_total", self.steps, "Denoising steps run (one forward pass each)."),
                ("diffucoder_tokens_total", self.tokens, "Tokens revealed."),
                (
                    "diffucoder_context_computed_tokens_total",
                    self.context_tokens,
                    "Canvas positions a batch's first pass computed.",
                ),
                (
                    "diffucoder_context_reused_tokens_total",
                    self.reused_tokens,
                    "Canvas positions taken from an editor document's stored context instead.",
                ),
            ):
                out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
            gauges = list(self.gauges.items())
        for name, read in gauges:  # read outside the lock: a gauge may take the batcher's
            out += [f"# TYPE {name} gauge", f"{name} {_num(read())}"]
        return "\n".join(out) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
