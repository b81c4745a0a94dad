"""The plain data of a fill: the hole syntax and its limits, the canvas, a step's event and the result.

These types are what a fill's consumers hold (the demo, the language server, the backend's answers), and a
client of a remote backend builds them from the backend's JSON. They live apart from the code that runs a fill
so that importing them imports no part of the model stack: ``diffucoder demo --model http://host:port`` runs on
a machine without torch, as ``fill`` and ``serve`` do. :mod:`.infill` and :mod:`.sampler` re-export them, so
``from diffucoder_lsp.engine.infill import InfillCanvas`` keeps working; a torch-free caller imports them from
here. A :class:`StepEvent`'s fields are tensors, but this module only names their type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import BadInputError

if TYPE_CHECKING:
    import torch

    from .healing import HoleLead

DEFAULT_MARKER = "<|mask|>"
AUTO_LENGTH = 48  # tokens given to an ``auto`` hole; trailing pads are trimmed
MAX_HOLE_TOKENS = 1024
Length = int | str

__all__ = [
    "AUTO_LENGTH",
    "DEFAULT_MARKER",
    "MAX_HOLE_TOKENS",
    "HoleResult",
    "InfillCanvas",
    "InfillResult",
    "Length",
    "StepEvent",
    "split_holes",
]


@dataclass(frozen=True)
class HoleResult:
    """One filled hole. ``token_ids``, ``reveal_step`` and ``confidence`` are aligned, one entry per position
    of the hole (trailing stop tokens cut for ``auto`` holes), the lead's positions included: with token
    healing the first token's text starts with ``lead`` (or the first tokens spell it). ``text`` is their
    decoded text with the lead taken off its start, i.e. what goes where the marker was; a caller that
    decodes ``token_ids`` itself must drop ``lead`` from the start of the result."""

    text: str
    token_ids: list[int]
    reveal_step: list[int]
    confidence: list[float]
    lead: str = ""  # the text before the hole that the hole's first tokens re-spelled ("" when not healed)


@dataclass(frozen=True)
class InfillResult:
    text: str
    holes: list[HoleResult]
    steps: int
    elapsed_ms: float
    forward_passes: int = 0

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "holes": [
                {
                    "text": h.text,
                    "token_ids": h.token_ids,
                    "reveal_step": h.reveal_step,
                    "confidence": [round(c, 6) for c in h.confidence],
                    "lead": h.lead,
                }
                for h in self.holes
            ],
            "steps": self.steps,
            "forward_passes": self.forward_passes,
            "elapsed_ms": round(self.elapsed_ms, 3),
        }


@dataclass
class InfillCanvas:
    """A text with holes laid out as token ids. ``hole_spans[j]`` is hole j's [start, end) in ``ids``.

    With token healing, ``segments[j]`` ends without ``leads[j]``, the text that hole j's first position(s)
    must spell (they are inside ``hole_spans[j]``): the text before hole j is ``segments[j] + leads[j]``, and a
    view that shows the segments and the hole's tokens as they are revealed shows every character once."""

    ids: list[int]
    hole_spans: list[tuple[int, int]]
    auto: list[bool]
    kept_prefix: str  # the text before the first hole that was cut off (not seen by the model)
    kept_suffix: str  # the text after the last hole that was cut off
    segments: list[str]  # the text between holes as the model sees it: first/last cut, leads taken off
    leads: list[str] = field(default_factory=list)  # per hole; empty (or "") where nothing was backed off

    @property
    def num_holes(self) -> int:
        return len(self.hole_spans)

    def lead(self, j: int) -> str:
        return self.leads[j] if j < len(self.leads) else ""

    def hole_leads(self, row: int = 0) -> list[HoleLead]:
        """The healed holes, for :func:`~diffucoder_lsp.engine.healing.lead_constraint` (canvas row ``row``).
        Only a local fill asks, so the healing module (and torch) is imported here, not by a remote client."""
        from .healing import HoleLead

        return [HoleLead(row, a, b, self.lead(j)) for j, (a, b) in enumerate(self.hole_spans) if self.lead(j)]


@dataclass
class StepEvent:
    """What one denoising step revealed. Tensors are on the canvas's device; ``rows``/``cols`` index the canvas."""

    step: int
    total_steps: int
    rows: torch.Tensor
    cols: torch.Tensor
    tokens: torch.Tensor
    confidence: torch.Tensor
    remaining: int = field(default=0)  # masked positions left after this step, all rows together

    def per_row(self, batch: int) -> list[list[tuple[int, int, float]]]:
        """(position, token, confidence) triples grouped by row, in host memory."""
        out: list[list[tuple[int, int, float]]] = [[] for _ in range(batch)]
        for r, c, t, p in zip(
            self.rows.tolist(),
            self.cols.tolist(),
            self.tokens.tolist(),
            self.confidence.tolist(),
            strict=True,
        ):
            out[r].append((c, t, p))
        return out


def split_holes(text: str, marker: str = DEFAULT_MARKER) -> list[str]:
    """The text between the holes: one more part than there are holes (at least one hole, or an error)."""
    if not marker:
        raise BadInputError("the hole marker must not be empty")
    parts = text.split(marker)
    if len(parts) < 2:
        raise BadInputError(f"no holes: the text contains no {marker!r} marker")
    return parts


def hole_lengths(length: Length | Sequence[Length], holes: int) -> list[Length]:
    """Each hole's length, checked: one for all holes or one per hole, a token count or ``auto``."""
    if isinstance(length, (int, str)):
        lengths = [length] * holes
    else:
        lengths = list(length)
        if len(lengths) != holes:
            raise BadInputError(f"{len(lengths)} lengths given for {holes} holes")
    for n in lengths:
        if isinstance(n, str):
            if n != "auto":
                raise BadInputError(f"length must be a number of tokens or 'auto', got {n!r}")
        elif not 1 <= n <= MAX_HOLE_TOKENS:
            raise BadInputError(f"hole length must be between 1 and {MAX_HOLE_TOKENS} tokens, got {n}")
    return lengths
