"""The record of one fill run, step by step, so the demo can show any moment of it again (replay).

The worker turns each sampler :class:`~diffucoder_lsp.engine.canvas.StepEvent` into a plain
:class:`StepRecord` (host lists, no tensors: it crosses threads and outlives the run), and the screen appends it
to a :class:`FillHistory`. Because a position is revealed exactly once, the whole history fits in three arrays
over the canvas (token, reveal step, confidence): the state "after ``view`` steps" is every position whose
reveal step is below ``view``. Replay is therefore a single integer, and scrubbing costs nothing.

Nothing here knows about Textual; the metrics come from :mod:`diffucoder_lsp.analysis`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..analysis import ArCount, global_ar_count, local_ar_count
from ..engine.canvas import InfillCanvas


@dataclass(frozen=True)
class StepRecord:
    """What one denoising step revealed, on canvas row 0: parallel lists of positions, tokens, confidences."""

    step: int
    total_steps: int
    positions: tuple[int, ...]
    tokens: tuple[int, ...]
    confidences: tuple[float, ...]
    remaining: int
    elapsed: float  # seconds since the run started, when this step arrived

    @classmethod
    def from_event(cls, event, elapsed: float) -> StepRecord:
        """Copy a sampler ``StepEvent`` (tensors) for row 0 into host memory. A record already (a backend's
        step, see :class:`~diffucoder_lsp.tui.runner.RemoteRunner`) is kept, with this ``elapsed``."""
        if isinstance(event, StepRecord):
            return dataclasses.replace(event, elapsed=float(elapsed))
        triples = event.per_row(1)[0] if event.rows.numel() else []
        return cls(
            step=int(event.step),
            total_steps=int(event.total_steps),
            positions=tuple(int(p) for p, _, _ in triples),
            tokens=tuple(int(t) for _, t, _ in triples),
            confidences=tuple(float(c) for _, _, c in triples),
            remaining=int(event.remaining),
            elapsed=float(elapsed),
        )


@dataclass(frozen=True)
class HoleToken:
    """One canvas position of a hole as seen at some view step: ``token`` is None while still masked."""

    position: int
    token: int | None
    step: int | None
    confidence: float | None


@dataclass
class FillHistory:
    """Everything a fill run revealed, in order; ``view`` arguments count steps applied (0 = all masked)."""

    canvas: InfillCanvas
    total_steps: int = 0
    tokens: list[int | None] = field(default_factory=list)
    reveal_step: list[int | None] = field(default_factory=list)
    confidence: list[float | None] = field(default_factory=list)
    step_sizes: list[int] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    status: str = "running"  # running | done | cancelled | failed
    elapsed: float = 0.0
    # per hole, how many of its positions the editor would keep of what was written (None: all); set when a run
    # ends (:meth:`cut_at`), drawn struck through after that point
    kept: list[int | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.canvas.ids)
        self.tokens = self.tokens or [None] * n
        self.reveal_step = self.reveal_step or [None] * n
        self.confidence = self.confidence or [None] * n

    # --- building -----------------------------------------------------------------------------------------

    @property
    def steps_done(self) -> int:
        return len(self.step_sizes)

    @property
    def hole_tokens(self) -> int:
        return sum(b - a for a, b in self.canvas.hole_spans)

    def apply(self, record: StepRecord) -> None:
        """Append one step. Steps must arrive in order: the view index is the number of steps applied."""
        if record.step != self.steps_done:
            raise ValueError(f"step {record.step} arrived after {self.steps_done} steps")
        self.total_steps = max(self.total_steps, record.total_steps)
        for pos, tok, conf in zip(record.positions, record.tokens, record.confidences, strict=True):
            if self.reveal_step[pos] is not None:
                raise ValueError(
                    f"position {pos} revealed twice (steps {self.reveal_step[pos]}, {record.step})"
                )
            self.tokens[pos] = tok
            self.reveal_step[pos] = record.step
            self.confidence[pos] = conf
        self.step_sizes.append(len(record.positions))
        self.step_times.append(record.elapsed)
        self.elapsed = record.elapsed

    def finish(self, status: str, elapsed: float | None = None) -> None:
        """Mark the run over (done, cancelled or failed); a run that stopped early keeps its last total."""
        self.status = status
        if elapsed is not None:
            self.elapsed = elapsed
        if status == "done":
            self.total_steps = self.steps_done

    def cut_at(self, shown: list[str | None], token_text) -> None:
        """Record where the editor would cut each hole: ``shown[j]`` is hole j's text as the editor would insert
        it (its lead included), ``token_text`` a token's text. Hole j keeps the positions whose text makes up
        ``shown[j]``; where what was written does not start with it (the cut re-indented a line, say), or the
        hole has no ``shown`` text, the hole is left whole."""
        kept: list[int | None] = []
        for j, (a, b) in enumerate(self.canvas.hole_spans):
            target = shown[j] if j < len(shown) else None
            if target is None:
                kept.append(None)
                continue
            written, n = "", None
            for i, pos in enumerate(range(a, b)):
                tok = self.tokens[pos]
                if len(written) >= len(target) or tok is None:
                    n = i
                    break
                written += token_text(tok)
            if not written.startswith(target) and not target.startswith(written):
                kept.append(None)
            else:
                kept.append(b - a if n is None else n)
        self.kept = kept

    # --- reading at a view step ----------------------------------------------------------------------------

    def clamp(self, view: int) -> int:
        return max(0, min(view, self.steps_done))

    def holes_at(self, view: int) -> list[list[HoleToken]]:
        """Each hole's positions with what was visible after ``view`` steps."""
        view = self.clamp(view)
        out = []
        for a, b in self.canvas.hole_spans:
            row = []
            for pos in range(a, b):
                step = self.reveal_step[pos]
                if step is not None and step < view:
                    row.append(HoleToken(pos, self.tokens[pos], step, self.confidence[pos]))
                else:
                    row.append(HoleToken(pos, None, None, None))
            out.append(row)
        return out

    def revealed_at(self, view: int) -> int:
        return sum(self.step_sizes[: self.clamp(view)])

    def tokens_per_step(self, view: int) -> float | None:
        view = self.clamp(view)
        return self.revealed_at(view) / view if view else None

    def elapsed_at(self, view: int) -> float:
        view = self.clamp(view)
        if view == self.steps_done and self.status != "running":
            return self.elapsed
        return self.step_times[view - 1] if view else 0.0

    def span_steps(self, view: int) -> list[list[int | None]]:
        """Per hole, each position's reveal step if it is revealed by ``view`` (else None): the AR-ness input."""
        return [[t.step for t in hole] for hole in self.holes_at(view)]

    def ar_ness(self, view: int, k: int = 1) -> tuple[float | None, float | None]:
        """(local, global) AR-ness@k of the reveals up to ``view``, pooled over holes."""
        local, glob = ArCount(), ArCount()
        for span in self.span_steps(view):
            local = local + local_ar_count(span, k)
            glob = glob + global_ar_count(span, k)
        return local.ratio, glob.ratio
