"""A hole does not end before it has written something other than whitespace.

Why: an empty fill is never the answer a caller asked for (an editor drops an empty or whitespace-only
suggestion), yet a model can find ending right there its likeliest move. Measured with the bundled model on 200
held-out lines of click, decoded as the editor decodes: 25 fills were only the line's indentation, the model
having written the healed newline with its indent (``"\\n   "``) and then the end token, where the line holds
``text = text.expandtabs()``. Whisper's decoder suppresses a blank first token and the end token at the start
of sampling for the same reason.

Rule: at each step, an eligible masked position of a hole may not take a stop token (end of text, padding)
while the tokens revealed before it in the hole hold nothing but whitespace past the hole's healed lead. So the
first stop of a hole always has text before it, whatever the order of reveals: decoded left to right (the
editors' and ``fill``'s default) the hole writes its first word before it may end; decoded in blocks, the
padding at a block's end waits until something stands before it. Newline tokens are not touched (a healed lead
is often a newline, and a blank line may open a block). Not used by the exact reference decoder.

Cost: a walk over a hole's positions per step while it is still blank before its first masked position; it
drops out of the check once text stands there, or it has ended.
"""

from __future__ import annotations

import torch

from .healing import lead_constraint


class NonBlankStart:
    """The sampler constraint (``active`` / ``pick``, as :class:`~.healing.LeadConstraint`) that keeps holes
    from ending blank, wrapping the leads' constraint when there is one. ``spans``: (row, start, end, lead)."""

    def __init__(self, inner, spans, texts, stops, mask_id: int):
        self.inner = inner
        self.spans = [s for s in spans if s[2] > s[1]]
        self.texts = texts
        self.stops = frozenset(stops)
        self.mask_id = mask_id

    @property
    def active(self) -> bool:
        return bool(self.spans) or (self.inner is not None and self.inner.active)

    def pick(self, logits: torch.Tensor, x: torch.Tensor, eligible: torch.Tensor, pick_fn):
        if self.spans:
            self._restrict(logits, x, eligible)
        if self.inner is not None and self.inner.active:
            return self.inner.pick(logits, x, eligible, pick_fn)
        return pick_fn(logits)

    def _written(self, text: str, lead: str) -> bool:
        """Whether ``text`` (the hole's revealed tokens so far, masks skipped) holds text past the lead."""
        if lead and text.startswith(lead):
            text = text[len(lead) :]
        elif lead and lead.startswith(text):
            text = ""
        return bool(text.strip())

    def _restrict(self, logits: torch.Tensor, x: torch.Tensor, eligible: torch.Tensor) -> None:
        """Hold the stop tokens at every eligible masked position with no text past the lead before it; drop a
        hole from the check once text stands before its first masked position, or it has ended. Text only
        grows along a hole, so once it stands before a position it stands before every later one."""
        keep, held, texts, n = [], [], self.texts, len(self.texts)
        for r, a, b, lead in self.spans:
            seg, ok = x[r, a:b].tolist(), eligible[r, a:b].tolist()
            text, first = "", True
            for k, t in enumerate(seg):
                if t in self.stops:
                    break  # what follows a stop is cut
                if t != self.mask_id:
                    text += texts[t] if 0 <= t < n else "\ufffd"
                    continue
                if self._written(text, lead):
                    break
                if first:
                    keep.append((r, a, b, lead))
                    first = False
                if ok[k]:
                    held.append(r * x.shape[1] + a + k)
        self.spans = keep
        stops = [s for s in sorted(self.stops) if s < logits.shape[-1]]
        if not held or not stops:
            return
        rank = eligible.reshape(-1).long().cumsum(0) - 1
        rows = rank[torch.tensor(held, device=rank.device)]
        logits[rows[:, None], torch.tensor(stops, device=logits.device)[None, :]] = float("-inf")


def hole_constraint(tokenizer, canvases, nonblank: bool):
    """The sampler constraint of laid-out canvases (``canvases``: (batch row, canvas) pairs): the healed holes'
    leads (:func:`~.healing.lead_constraint`) and, with ``nonblank`` (callers: unless ``options.exact``), no
    hole ending blank. None when neither applies (the sampler then runs as it always did)."""
    inner = lead_constraint(tokenizer, [lead for row, c in canvases for lead in c.hole_leads(row)])
    if not nonblank:
        return inner
    spans = [(row, a, b, c.lead(j)) for row, c in canvases for j, (a, b) in enumerate(c.hole_spans)]
    if not spans or not tokenizer.stop_ids:
        return inner
    return NonBlankStart(inner, spans, tokenizer.token_texts, tokenizer.stop_ids, tokenizer.mask_id)
