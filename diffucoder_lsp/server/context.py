"""The text around the cursor the model sees: a prefix and a suffix within a token budget, cut at line boundaries.

The suffix is the reason to use a diffusion model for completion, so it gets a real share of the budget
(``prefix_share`` of it goes to the prefix, the rest to the suffix, and whatever one side does not use is given to
the other). Whole lines are taken outward from the cursor line; the cursor line's own text on both sides is
always kept (cut by characters only when a single line is absurdly long, as in minified files).

Only lines near the cursor are ever tokenized, so a large document costs no more than a small one. Text that
looks like one of the model's special tokens (``<|mask|>``, ``<|endoftext|>``) is defused with a zero-width space:
the tokenizer would otherwise turn it into the special id and the model would try to fill or stop on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_SPECIAL = re.compile(r"<\|([A-Za-z_]+)\|>")
CHARS_PER_TOKEN_MAX = 8  # a generous chars/token ratio, to cut a single huge line by characters


@dataclass(frozen=True)
class Context:
    prefix: str
    suffix: str
    prefix_tokens: int
    suffix_tokens: int
    prefix_cut: bool  # some of the document before the cursor is not in ``prefix``
    suffix_cut: bool

    @property
    def tokens(self) -> int:
        return self.prefix_tokens + self.suffix_tokens


def defuse_special_tokens(text: str) -> str:
    """``<|mask|>`` -> ``<\u200b|mask|>`` and so on, so document text never becomes a special token."""
    if "<|" not in text:
        return text
    return _SPECIAL.sub(lambda m: "<\u200b|" + m.group(1) + "|>", text)


class _Side:
    """Lines taken one by one outward from the cursor, on one side."""

    def __init__(self, text: str, start: int, backward: bool, count: Callable[[str], int]) -> None:
        self.text = text
        self.pos = start  # backward: lines before pos are left; forward: lines from pos on are left
        self.backward = backward
        self.count = count
        self.used = 0
        self.exhausted = (start == 0) if backward else (start >= len(text))

    def grow(self, budget: int) -> None:
        """Take whole lines while they fit in ``budget`` tokens (in total for this side)."""
        text = self.text
        while not self.exhausted:
            if self.backward:
                start = text.rfind("\n", 0, self.pos - 1) + 1
                line = text[start : self.pos]
            else:
                nl = text.find("\n", self.pos)
                end = len(text) if nl < 0 else nl + 1
                line = text[self.pos : end]
            n = self.count(line)
            if self.used + n > budget:
                return
            self.used += n
            if self.backward:
                self.pos = start
                self.exhausted = start == 0
            else:
                self.pos = end
                self.exhausted = end >= len(text)


def build_context(
    prefix: str,
    suffix: str,
    *,
    budget: int,
    count: Callable[[str], int],
    prefix_share: float = 0.7,
) -> Context:
    """Cut ``prefix`` (document before the cursor) and ``suffix`` (after it) to ``budget`` tokens in total."""
    max_chars = max(budget, 1) * CHARS_PER_TOKEN_MAX
    head_start = prefix.rfind("\n") + 1
    head = prefix[head_start:]
    nl = suffix.find("\n")
    tail_end = len(suffix) if nl < 0 else nl + 1
    tail = suffix[:tail_end]
    head_cut = tail_cut = False
    if len(head) > max_chars:
        head, head_cut = head[-max_chars:], True
    if len(tail) > max_chars:
        tail, tail_cut = tail[:max_chars], True

    pre_budget = int(budget * prefix_share)
    before = _Side(prefix, head_start, backward=True, count=count)
    after = _Side(suffix, tail_end, backward=False, count=count)
    before.used = count(head)
    after.used = count(tail)
    if head_cut:
        before.exhausted = True
    if tail_cut:
        after.exhausted = True
    before.grow(min(pre_budget, budget - after.used))
    after.grow(budget - before.used)  # its share, and what the prefix could not use
    if after.exhausted:  # the suffix left room: give it to the prefix
        before.grow(budget - after.used)

    model_prefix = head if head_cut else prefix[before.pos :]
    model_suffix = tail if tail_cut else suffix[: after.pos]
    return Context(
        prefix=defuse_special_tokens(model_prefix),
        suffix=defuse_special_tokens(model_suffix),
        prefix_tokens=before.used,
        suffix_tokens=after.used,
        prefix_cut=head_cut or before.pos > 0,
        suffix_cut=tail_cut or after.pos < len(suffix),
    )
