"""Drafts for speculative steps, looked up in the canvas itself (prompt-lookup decoding).

Why: code repeats itself. The tokens after a hole's last revealed ones have often been written before, in
the same file: ``self.y = y`` after ``self.x = x``, a name defined above, a call repeated below the hole. When
the last few tokens the hole holds occur elsewhere in the canvas (before the hole or in the text after it),
the tokens that followed them there are a cheap guess at what comes next. A speculative step
(:mod:`diffucoder_lsp.engine.cache`) checks such a guess in one pass: every guessed token the model would
have written itself is kept, so a line can take fewer passes than tokens, with the same tokens as a step
at a time (up to floating-point rounding).

No model is involved, and a guess costs nothing when there is none: no match, no speculation.
"""

from __future__ import annotations

import torch

# the longest and shortest run of the hole's last tokens that must recur elsewhere for a draft: one token
# (``(``, ``.``, a newline) recurs everywhere and predicts little
MAX_MATCH = 4
MIN_MATCH = 2


def draft_after(
    tokens: torch.Tensor,
    known: torch.Tensor,
    end: int,
    max_tokens: int,
    *,
    max_match: int = MAX_MATCH,
    min_match: int = MIN_MATCH,
) -> list[int]:
    """Up to ``max_tokens`` tokens guessed to follow position ``end`` of the 1-D ``tokens``.

    ``known`` (bool, same length) marks real, revealed tokens (not masks, not padding). The last ``g`` tokens
    ending at ``end`` (all known; ``g`` from ``max_match`` down to ``min_match``, the longest that recurs) are
    looked for elsewhere; the known tokens following the occurrence nearest to ``end`` are the draft, cut at
    the first unknown one. Returns [] when nothing recurs."""
    if max_tokens <= 0 or end < 0 or end >= tokens.shape[0] or not bool(known[end]):
        return []
    n = tokens.shape[0]
    for g in range(min(max_match, end + 1), min_match - 1, -1):
        start = end - g + 1
        if not bool(known[start : end + 1].all()):
            continue
        pattern = tokens[start : end + 1]
        windows = tokens.unfold(0, g, 1)  # (n - g + 1, g): window j covers j .. j + g - 1
        hits = (windows == pattern).all(1) & known.unfold(0, g, 1).all(1)
        hits[start] = False  # the pattern itself
        follow = torch.arange(hits.shape[0], device=tokens.device) + g  # the first token after each window
        hits &= follow < n
        hits[hits.clone()] &= known[follow[hits]]
        where = hits.nonzero().flatten()
        if where.numel() == 0:
            continue
        nearest = int(where[(where - start).abs().argmin()])
        first = nearest + g
        draft: list[int] = []
        for pos in range(first, min(n, first + max_tokens)):
            if not bool(known[pos]):
                break
            draft.append(int(tokens[pos]))
        if draft:
            return draft
    return []
