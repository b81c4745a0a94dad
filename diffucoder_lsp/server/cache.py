"""An LRU cache of model fills that also serves text the user has typed ahead along a suggestion.

An entry is (document text before the cursor, after it, a key of the settings and mode) -> the raw fill the
model wrote there. A later request with the same suffix whose prefix is the cached prefix plus ``typed``, where
the fill starts with ``typed``, is answered with the rest of the fill at once: the user is accepting the
suggestion character by character, and asking the model again would only make the ghost text flicker.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

MAX_TEXT_CHARS = 400_000  # documents larger than this are not cached (the key holds the whole text)


@dataclass(frozen=True)
class Hit:
    fill: str  # what remains of the cached fill after the typed-ahead text
    typed: int  # characters of the fill the user had already typed (0 = exact hit)


class CompletionCache:
    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[Hashable, str, str], str] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        while len(self._entries) > capacity:
            self._entries.popitem(last=False)

    def put(self, key: Hashable, prefix: str, suffix: str, fill: str) -> None:
        if self.capacity <= 0 or len(prefix) + len(suffix) > MAX_TEXT_CHARS:
            return
        k = (key, prefix, suffix)
        self._entries[k] = fill
        self._entries.move_to_end(k)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def has(self, key: Hashable, prefix: str, suffix: str) -> bool:
        """Whether an exact entry exists (no effect on recency or the hit counts)."""
        return (key, prefix, suffix) in self._entries

    def get(self, key: Hashable, prefix: str, suffix: str) -> Hit | None:
        """An exact hit, or the longest cached fill the user has typed part of; None when nothing applies."""
        exact = self._entries.get((key, prefix, suffix))
        if exact is not None:
            self._entries.move_to_end((key, prefix, suffix))
            self.hits += 1
            return Hit(exact, 0)
        best: tuple[int, tuple] | None = None
        for k, fill in self._entries.items():
            ekey, eprefix, esuffix = k
            if ekey != key or esuffix != suffix:
                continue
            typed = len(prefix) - len(eprefix)
            if (
                0 < typed < len(fill)
                and prefix.startswith(eprefix)
                and fill.startswith(prefix[len(eprefix) :])
            ):
                if best is None or typed < best[0]:
                    best = (typed, k)
        if best is None:
            self.misses += 1
            return None
        typed, k = best
        self._entries.move_to_end(k)
        self.hits += 1
        return Hit(self._entries[k][typed:], typed)
