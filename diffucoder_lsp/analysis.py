"""How far from left-to-right a diffusion decoder decoded: AR-ness metrics and reveal-order statistics.

The DiffuCoder paper's decoding analysis asks two questions of a finished denoising run, and this module answers
them from plain data (no torch, no model), so the TUI can show them live and ``diffucoder analyze`` can pool
them over many tasks:

* **local AR-ness@k**: does a newly revealed token continue the run it extends, i.e. is it the right neighbour
  of the previously revealed position, and were the k-1 reveals before it right neighbours too? An
  autoregressive decoder scores 1.0 at every k.
* **global AR-ness@k**: is the revealed position among the k leftmost positions still masked at that moment?
  An autoregressive decoder scores 1.0; a right-to-left decoder scores ``k / N`` on a span of N tokens.

Input is one hole's ``reveal_steps``: for each position of the span (0 = right after the prefix), the step at
which it was revealed, or ``None`` while it is still masked. Choices this module makes, stated once:

* A step that reveals several positions is read left to right (ties broken by position). This is the most
  left-to-right-friendly reading, so parallel decoding of a left-aligned block still counts as in order.
* The prefix is an already-decoded run ending at position -1: revealing position 0 first continues it. Every
  transition before the first reveal therefore counts as "consecutive", and local AR-ness@k never needs more
  history than the span has.
* Positions never revealed stay masked: they count in the global ranks but are never reveals themselves. This
  lets the TUI show the metrics of a run that is still going (or replayed up to some step).

Several spans (holes, tasks) are pooled by summing hits and reveals, not by averaging ratios, so a long span
weighs more than a short one, as in a per-token average.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RevealSteps = Sequence[int | None]

__all__ = [
    "ArCount",
    "certainty",
    "confidence_by_offset",
    "decode_order",
    "global_ar_count",
    "global_ar_ness",
    "local_ar_count",
    "local_ar_ness",
    "reveal_heatmap",
]


@dataclass(frozen=True)
class ArCount:
    """Reveals that met the criterion (``hits``) out of all reveals (``total``); adds up over spans."""

    hits: int = 0
    total: int = 0

    def __add__(self, other: ArCount) -> ArCount:
        return ArCount(self.hits + other.hits, self.total + other.total)

    @property
    def ratio(self) -> float | None:
        """hits / total, or None when nothing was revealed (no evidence either way)."""
        return self.hits / self.total if self.total else None


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def decode_order(reveal_steps: RevealSteps) -> list[int]:
    """Revealed positions in the order they were decoded: by step, ties (one step, several tokens) by position."""
    revealed = [i for i, s in enumerate(reveal_steps) if s is not None]
    for i in revealed:
        if reveal_steps[i] < 0:  # type: ignore[operator]
            raise ValueError(f"reveal step of position {i} is negative ({reveal_steps[i]})")
    return sorted(revealed, key=lambda i: (reveal_steps[i], i))


def local_ar_count(reveal_steps: RevealSteps, k: int = 1) -> ArCount:
    """Reveals whose last ``k`` transitions (from the previous reveal, or the prefix end) were all +1."""
    _check_k(k)
    seq = [-1, *decode_order(reveal_steps)]
    step_ok = [seq[i] == seq[i - 1] + 1 for i in range(1, len(seq))]  # step_ok[j]: reveal j continued its run
    hits = 0
    run = 0  # consecutive +1 transitions ending at reveal j; the prefix makes the run unbounded at the start
    for j, ok in enumerate(step_ok):
        run = run + 1 if ok else 0
        # While j < k the run reaches back to the prefix, which is itself a run of any length.
        if ok and (run >= k or run == j + 1):
            hits += 1
    return ArCount(hits, len(step_ok))


def global_ar_count(reveal_steps: RevealSteps, k: int = 1) -> ArCount:
    """Reveals that took one of the ``k`` leftmost positions still masked at that moment."""
    _check_k(k)
    order = decode_order(reveal_steps)
    masked = sorted(range(len(reveal_steps)))
    hits = 0
    for pos in order:
        rank = masked.index(pos)  # 0 = leftmost still-masked position
        if rank < k:
            hits += 1
        masked.pop(rank)
    return ArCount(hits, len(order))


def _pooled(fn, spans: Iterable[RevealSteps], k: int) -> float | None:
    total = ArCount()
    for span in spans:
        total = total + fn(span, k)
    return total.ratio


def local_ar_ness(spans: Iterable[RevealSteps], k: int = 1) -> float | None:
    """Local AR-ness@k pooled over spans (None when nothing was revealed)."""
    return _pooled(local_ar_count, spans, k)


def global_ar_ness(spans: Iterable[RevealSteps], k: int = 1) -> float | None:
    """Global AR-ness@k pooled over spans (None when nothing was revealed)."""
    return _pooled(global_ar_count, spans, k)


def reveal_heatmap(spans: Iterable[RevealSteps], bins: int = 10) -> list[list[float]]:
    """Where in a span tokens get decoded over time: ``heat[t][p]`` for relative decode time t, position p.

    Position bin ``p`` covers relative positions ``[p/bins, (p+1)/bins)`` of the span; time bin ``t`` covers the
    same fraction of the span's decode order (the j-th of N reveals falls in bin ``j * bins // N``). Each column
    is normalised to sum to 1: it is the distribution of *when* tokens at that relative position were decoded.
    A left-to-right decoder gives the diagonal; a right-to-left one the anti-diagonal. Columns no span reached
    stay all zero. Only fully revealed spans count (a partial order has no defined relative time).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    counts = [[0] * bins for _ in range(bins)]
    for span in spans:
        n = len(span)
        if n == 0 or any(s is None for s in span):
            continue
        for j, pos in enumerate(decode_order(span)):
            counts[j * bins // n][pos * bins // n] += 1
    heat = [[0.0] * bins for _ in range(bins)]
    for p in range(bins):
        column = sum(counts[t][p] for t in range(bins))
        if column:
            for t in range(bins):
                heat[t][p] = counts[t][p] / column
    return heat


def confidence_by_offset(rows: Iterable[Sequence[float]]) -> list[tuple[int, float, int]]:
    """Mean confidence at each offset from the prefix end: ``(offset, mean, count)`` per offset seen.

    Each row holds one span's first-step confidences, index 0 being the position right after the prefix.
    Spans of different lengths are pooled per offset, so long offsets rest on fewer spans (``count`` says how
    many). The paper's "entropy sink": with a real model the mean peaks at offset 0.
    """
    sums: list[float] = []
    counts: list[int] = []
    for row in rows:
        for i, c in enumerate(row):
            if i >= len(sums):
                sums.append(0.0)
                counts.append(0)
            sums[i] += float(c)
            counts[i] += 1
    return [(i, sums[i] / counts[i], counts[i]) for i in range(len(sums)) if counts[i]]


def certainty(confidence: float, alg: str) -> float:
    """A sampler confidence mapped into [0, 1] (1 = sure) so that every algorithm can share one colour scale.

    ``entropy`` confidences are ``sum p log p`` (minus the entropy, <= 0): ``exp`` of it is the inverse
    perplexity of the distribution, 1 for a one-hot prediction. The other algorithms are probabilities or
    probability margins already.
    """
    value = math.exp(confidence) if alg == "entropy" else confidence
    return min(1.0, max(0.0, value))
