"""How sure the model is of one suggestion: a number in [0, 1] from the sampler's per-token confidences.

Why: a wrong ghost text costs the user a read and a dismissal, more than no suggestion at all. The sampler
reports, for every token it reveals, a confidence under its unmasking algorithm; this module folds those into
one score per suggestion, so the language server can withhold what the model is unsure of (``minConfidence``)
and ``diffucoder eval calibrate`` can measure which score, at which threshold, separates right from wrong.

Per token, the reported confidence is mapped to [0, 1], higher = surer (:func:`token_certainty`), so that one
threshold means the same whichever algorithm decoded the suggestion and whichever statistic is used:

* ``maskgit_plus`` and ``origin``: the chosen token's probability, as reported;
* ``topk_margin``: the top-1 minus top-2 probability, as reported;
* ``entropy``: the sampler reports minus the entropy H (nats) of the position's distribution; ``exp(-H)`` is
  1 for a certain position and 1/k for k equally likely tokens (one over the distribution's perplexity).

Each mapping is increasing in the reported confidence. All of them describe the distribution the sampler drew
from (temperature and top-p applied), which is what the suggestion came from.

A statistic reads the suggestion's tokens up to its first stop token (what is shown), either all of them or
those that write its first line with code on it (a block's first line is what an editor shows inline), and
reduces them with the mean, the minimum or the geometric mean (under ``maskgit_plus`` the geometric-mean
probability, i.e. the suggestion's per-token likelihood; under ``entropy`` exp(-mean entropy)). Every
statistic is in [0, 1] and never decreases when any token's confidence rises; with no tokens to read it is 0.
Which one ships (:data:`DEFAULT_STATISTIC`) was chosen by measurement with ``diffucoder eval calibrate``.

A calibrated threshold travels with the model as ``calibration.json`` in its folder (:class:`Calibration`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = 1


# --- per token ---------------------------------------------------------------------------------------------


def token_certainty(confidence: float, alg: str) -> float:
    """The sampler's confidence of one token under ``alg``, as a number in [0, 1] (higher = surer)."""
    if alg == "entropy":  # -H in nats, <= 0
        value = math.exp(min(confidence, 0.0))
    else:  # a probability or a difference of two
        value = confidence
    if not math.isfinite(value):
        return 0.0
    return min(1.0, max(0.0, value))


@dataclass(frozen=True)
class SuggestionTokens:
    """What a statistic reads: the certainty of each token of a suggestion (cut before its first stop token)
    and which of them write its first line with code on it (``first_line`` is a [start, end) index range)."""

    certainty: tuple[float, ...]
    first_line: tuple[int, int] = (0, 0)

    def first_line_certainty(self) -> tuple[float, ...]:
        a, b = self.first_line
        return self.certainty[a:b]


def _first_code_line(text: str) -> tuple[int, int]:
    """Character range [a, b) of the code on the first line of ``text`` that has any (indentation and
    trailing spaces left out); (0, 0) when there is none."""
    start = 0
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped:
            a = start + len(line) - len(line.lstrip())
            return a, a + len(stripped)
        start += len(line) + 1
    return 0, 0


def suggestion_tokens(
    token_ids: Sequence[int], confidence: Sequence[float], alg: str, tokenizer, lead: str = ""
) -> SuggestionTokens:
    """The tokens of a filled hole as statistics read them.

    ``token_ids``/``confidence`` are a hole's tokens and their sampler confidences (``HoleResult``); everything
    from the first stop token on is dropped (the suggestion ends there). ``lead`` (``HoleResult.lead``, token
    healing) is text before the hole that the first tokens re-spell: tokens lying wholly inside it are the
    user's text, not the suggestion, and are dropped too. The first line's tokens are found by decoding growing
    prefixes (byte-level tokens do not map one to one onto characters): a token belongs to the line when the
    text it adds overlaps the line's code.
    """
    stops = tokenizer.stop_ids
    end = next((i for i, t in enumerate(token_ids) if t in stops), len(token_ids))
    ids = [int(t) for t in token_ids[:end]]
    text = tokenizer.decode(ids)
    skip = len(lead) if lead and text.startswith(lead) else 0
    a, b = _first_code_line(text[skip:])
    a, b = a + skip, b + skip
    first_kept = 0 if skip == 0 else None
    first = last = None
    before = 0
    for i in range(len(ids)):
        if first_kept is not None and (a == b or before >= b):
            break
        # an unfinished multi-byte character decodes to a replacement character: keep the offsets monotone
        after = min(len(text), max(before, len(tokenizer.decode(ids[: i + 1]))))
        if first_kept is None and after > skip:
            first_kept = i
        if a < b and before < b and after > a:
            first = i if first is None else first
            last = i
        before = after
    first_kept = len(ids) if first_kept is None else first_kept
    certainty = tuple(token_certainty(float(c), alg) for c in confidence[first_kept:end])
    if first is None:
        return SuggestionTokens(certainty, (0, 0))
    first = max(first, first_kept)
    return SuggestionTokens(certainty, (first - first_kept, last + 1 - first_kept))


# --- statistics ----------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _geomean(values: Sequence[float]) -> float:
    if min(values) <= 0.0:
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


_REDUCERS: dict[str, Callable[[Sequence[float]], float]] = {"mean": _mean, "min": min, "geomean": _geomean}
_SPANS: dict[str, Callable[[SuggestionTokens], tuple[float, ...]]] = {
    "first_line": SuggestionTokens.first_line_certainty,
    "all": lambda s: s.certainty,
}
STATISTICS: tuple[str, ...] = tuple(f"{span}_{reducer}" for span in _SPANS for reducer in _REDUCERS)
DEFAULT_STATISTIC = "first_line_min"  # chosen with `diffucoder eval calibrate` (see the module docstring)


def statistic(tokens: SuggestionTokens, name: str) -> float:
    """The score of a suggestion under the statistic ``name`` (one of :data:`STATISTICS`), in [0, 1]."""
    span, _, reducer = name.rpartition("_")
    if span not in _SPANS or reducer not in _REDUCERS:
        raise ValueError(f"unknown confidence statistic {name!r}; choose one of {', '.join(STATISTICS)}")
    values = _SPANS[span](tokens)
    if not values:
        return 0.0
    return min(1.0, max(0.0, _REDUCERS[reducer](values)))


def all_statistics(tokens: SuggestionTokens) -> dict[str, float]:
    """Every statistic of a suggestion, by name (what calibration records)."""
    return {name: statistic(tokens, name) for name in STATISTICS}


# --- calibration that travels with a model -----------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """A model's measured confidence gate, stored as ``calibration.json`` in the model folder::

        {"format": 1, "statistic": "first_line_min", "min_confidence": 0.42, "target_precision": 0.6,
         "decoding": {"alg": "entropy", ...}, "measured": {"requests": 400, "coverage": 0.31, ...}}

    ``statistic`` and ``min_confidence`` are the gate; ``target_precision`` is the share of shown suggestions
    whose first line was right that the threshold was chosen for; ``decoding`` the server settings it was
    measured with (a confidence measured under one unmasking algorithm means something else under another, so
    the server applies the calibrated default only under the same ``alg``); ``measured`` what the calibration run
    saw (free-form: requests, coverage, precision, data, seed).

    ``ranked`` (optional, same fields): the gate of ranked one-line completions (the server's ``rankLines``),
    whose suggestions are scored by the base's token probabilities, another scale than the diffusion's; it is
    measured with ``eval calibrate --settings '{"rankLines": N}' --write-calibration DIR`` and stored beside the
    default gate.
    """

    statistic: str
    min_confidence: float
    target_precision: float | None = None
    decoding: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    ranked: Calibration | None = None

    @property
    def alg(self) -> str | None:
        alg = self.decoding.get("alg")
        return alg if isinstance(alg, str) else None

    def to_json(self) -> dict[str, Any]:
        out = {
            "format": CALIBRATION_FORMAT,
            "statistic": self.statistic,
            "min_confidence": self.min_confidence,
            "target_precision": self.target_precision,
            "decoding": self.decoding,
            "measured": self.measured,
        }
        if self.ranked is not None:
            out["ranked"] = {k: v for k, v in self.ranked.to_json().items() if k != "format"}
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Calibration:
        """Parse and check a calibration object; ValueError with the reason when it is not one."""
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object")
        name = raw.get("statistic")
        if name not in STATISTICS:
            raise ValueError(f"unknown statistic {name!r}")
        value = raw.get("min_confidence")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"min_confidence must be a number in [0, 1], got {value!r}")
        target = raw.get("target_precision")
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
            raise ValueError(f"target_precision must be a number, got {target!r}")
        decoding = raw.get("decoding") if isinstance(raw.get("decoding"), dict) else {}
        measured = raw.get("measured") if isinstance(raw.get("measured"), dict) else {}
        ranked = None
        if raw.get("ranked") is not None:
            if not isinstance(raw["ranked"], dict) or "ranked" in raw["ranked"]:
                raise ValueError("ranked must be a calibration object (without a ranked part of its own)")
            try:
                ranked = cls.from_json(raw["ranked"])
            except ValueError as exc:
                raise ValueError(f"ranked: {exc}") from None
        return cls(name, float(value), None if target is None else float(target), decoding, measured, ranked)


def read_calibration(folder: str | Path | None) -> Calibration | None:
    """The calibration stored in a model folder, or None when it has none. A malformed file is logged and
    ignored: a model must load whatever its side files say."""
    if folder is None:
        return None
    from ..errors import CheckpointError
    from ..model.files import read_json

    path = Path(folder) / CALIBRATION_FILE
    if not path.exists():
        path = _shipped_calibration(Path(folder))
        if path is None:
            return None
    try:
        return Calibration.from_json(read_json(path, CALIBRATION_FILE, limit=1 << 20))
    except (CheckpointError, ValueError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None


def _shipped_calibration(folder: Path) -> Path | None:
    """The bundled model's calibration as shipped in the package, for its merged folder in the cache.

    The merged folder is named after the adaptation's manifest, so a calibration shipped (or re-measured) after
    a user's first merge would never reach that folder; the package's copy is the current one."""
    from ..model.bundled import BUNDLED_ADAPTATION_DIR, adapted_target, has_adaptation

    try:
        if not has_adaptation() or folder.resolve() != adapted_target().resolve():
            return None
    except OSError:
        return None
    path = BUNDLED_ADAPTATION_DIR / CALIBRATION_FILE
    return path if path.is_file() else None


def write_calibration(folder: str | Path, calibration: Calibration) -> Path:
    """Write ``calibration.json`` into ``folder`` (created if missing); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CALIBRATION_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(calibration.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def infill_record(result, lm, alg: str, name: str | None = None) -> dict[str, Any]:
    """An infill result's JSON record (``fill --json``, the backend's ``/v1/infill``) with each hole's
    ``confidence_score`` (in [0, 1], under the statistic the server's gate uses for this model unless ``name``
    is given) and the statistic's name."""
    if name is None:
        cal = read_calibration(getattr(lm, "path", None))
        name = cal.statistic if cal is not None else DEFAULT_STATISTIC
    record = result.to_json()
    for hole, out in zip(result.holes, record["holes"], strict=True):
        lead = getattr(hole, "lead", "")
        tokens = suggestion_tokens(hole.token_ids, hole.confidence, alg, lm.tokenizer, lead)
        out["confidence_score"] = round(statistic(tokens, name), 6)
    record["confidence_statistic"] = name
    return record


__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_STATISTIC",
    "STATISTICS",
    "Calibration",
    "SuggestionTokens",
    "all_statistics",
    "infill_record",
    "read_calibration",
    "statistic",
    "suggestion_tokens",
    "token_certainty",
    "write_calibration",
]
