"""What a fill returns to the language server: :class:`Fill`, and :class:`WithheldText` for a completion the
confidence gate held back. Apart from :mod:`.engine_client` so that the backend's client
(:mod:`.remote_engine`) returns the same results without importing the engine client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fill:
    texts: list[str]  # one per hole, trailing padding trimmed
    steps: int
    elapsed_ms: float
    context_tokens: int = 0
    tokens: tuple = ()  # one SuggestionTokens per hole: what the confidence statistics read
    confidence: float | None = None  # complete(): the completion's score under the gate's statistic


class WithheldText(str):
    """The (empty) text of a completion the confidence gate withheld.

    A ``str``, so that the completion cache stores it like any fill (and speculation, which fills the cache,
    needs no change); it keeps the score and threshold so that a request answered from the cache can still
    tell the user why nothing was shown. Typing ahead never matches it (it is empty)."""

    statistic: str
    confidence: float
    threshold: float

    def __new__(cls, statistic_name: str, confidence: float, threshold: float) -> WithheldText:
        obj = super().__new__(cls, "")
        obj.statistic, obj.confidence, obj.threshold = statistic_name, confidence, threshold
        return obj

    def reason(self) -> str:
        return (
            f"below the confidence threshold: {self.statistic} {self.confidence:.3f} "
            f"< minConfidence {self.threshold:.3f}"
        )
