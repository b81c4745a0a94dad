"""Token healing at hole boundaries: the text just before a hole is handed to the hole as a required *lead*.

Why: a byte-level BPE model reads text as the tokens its tokenizer would emit for the *finished* code. A hole
cuts the text at a character, not at a token boundary of the finished code: after ``return `` the finished
code has the token `` a`` (space and name together), but the canvas shows a lone `` `` token and then masks,
a boundary the model almost never saw in training, and it writes something odd (measured with a real coder:
``10 + a + b`` after ``return ``, `` a + b`` without the space). The same holds after a bare newline, an
indent, or half a word.

What: :func:`back_off` takes the last token off the text before each hole (the segment keeps the rest, exactly)
and its text becomes the hole's lead. The sampler then only lets the hole's first position take a token whose
text starts with the lead (`` a`` for the lead `` ``), or a token that is a proper prefix of it, in which case
the next position must carry on with the rest (``   `` then `` return`` for the lead ``    ``). The lead's own
token is always allowed, so a constraint can always be met. :class:`LeadConstraint` is that rule for
:func:`~diffucoder_lsp.engine.sampler.denoise`; it is dynamic because a diffusion decoder reveals positions in
any order (see :meth:`LeadConstraint.pick`).

Rule for backing off: always exactly the last token of the segment before the hole, unless it is a special
token, its text is not clean (part of a UTF-8 character), or the segment is empty. Any token can merge with
what follows it (a space with a name, ``(`` with ``)``, ``.`` with a name, a word with its own continuation), and
where it cannot (a digit) the constraint only allows what was there, so backing off always is harmless and one
token is enough: a split lead (an indent) is covered by the proper-prefix case above.

The suffix side is left as it is. A hole that ends inside a word (``pri<hole>nt(x)``) shows the model a
word-piece (``nt``) it rarely saw after a gap. Moving that piece into the hole would need "the hole's text ends
with it", but where a hole's text ends (its first stop token, or its last position) is only known once that
stop and every position before it are revealed, which a diffusion decoder does in any order, and it places
the trailing padding early; a rule that forbids a stop until the token before it ends right would force text
into that padding. The server's post-processing removes text that repeats the start of the suffix.
"""

from __future__ import annotations

import bisect
import weakref
from dataclasses import dataclass

import torch

REPLACEMENT = "\ufffd"  # what a byte-level token holding part of a UTF-8 character decodes to
_MAX_CACHED = 256  # prefix look-ups kept per tokenizer: leads repeat (" ", "\n", indents)


def back_off(tokenizer, segment: str, ids: list[int]) -> tuple[str, list[int], str]:
    """Split the last token off ``segment`` (tokenized as ``ids``): ``(kept text, kept ids, lead)``.

    ``kept text + lead == segment`` always, and ``kept ids`` decode to ``kept text`` exactly; when that
    cannot be had (no tokens, a special last token, a last token that is part of a character), nothing is
    backed off and the lead is empty."""
    if not ids:
        return segment, ids, ""
    last = ids[-1]
    if last in tokenizer.special_ids or not 0 <= last < len(tokenizer.token_texts):
        return segment, ids, ""
    lead = tokenizer.token_texts[last]
    if not lead or REPLACEMENT in lead or not segment.endswith(lead):
        return segment, ids, ""
    kept = segment[: len(segment) - len(lead)]
    if tokenizer.decode(ids[:-1], skip_special=False) != kept:
        return segment, ids, ""
    return kept, ids[:-1], lead


class VocabIndex:
    """The clean, non-special token texts of a vocabulary sorted, for "which tokens start with this text".

    The tokens whose text starts with ``s`` are one run of the sorted texts, found by two binary searches, so
    a look-up costs microseconds where a scan of a 152k vocabulary costs ~10 ms. Built once per tokenizer
    (:func:`vocab_index`). Texts holding U+FFFD are left out: they are not the bytes their token stands for,
    so comparing them could allow a token whose bytes do not spell the lead."""

    def __init__(self, texts: tuple[str, ...], special_ids) -> None:
        self.texts = texts
        clean = [i for i, t in enumerate(texts) if t and REPLACEMENT not in t and i not in special_ids]
        clean.sort(key=texts.__getitem__)
        self._order = clean
        self._sorted = [texts[i] for i in clean]
        self._prefix_cache: dict[str, torch.Tensor] = {}

    def starting_with(self, text: str) -> torch.Tensor:
        """Ids (CPU, int64) of every clean token whose text starts with ``text``."""
        hit = self._prefix_cache.get(text)
        if hit is not None:
            return hit
        lo, hi = self._range(text)
        ids = torch.tensor(self._order[lo:hi], dtype=torch.long)
        if len(self._prefix_cache) >= _MAX_CACHED:
            self._prefix_cache.clear()
        self._prefix_cache[text] = ids
        return ids

    def has_prefix(self, text: str) -> bool:
        lo, hi = self._range(text)
        return hi > lo

    def exactly(self, text: str) -> list[int]:
        """Ids of the clean tokens whose text is ``text``."""
        lo = bisect.bisect_left(self._sorted, text)
        hi = bisect.bisect_right(self._sorted, text, lo)
        return self._order[lo:hi]

    def _range(self, text: str) -> tuple[int, int]:
        lo = bisect.bisect_left(self._sorted, text)
        # every text starting with ``text`` sorts below ``text`` with its last character bumped by one
        last = ord(text[-1])
        upper = text[:-1] + chr(last + 1) if last < 0x10FFFF else text + chr(0x10FFFF)
        return lo, bisect.bisect_left(self._sorted, upper, lo)


_INDEXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocab_index(tokenizer) -> VocabIndex:
    """The tokenizer's :class:`VocabIndex`, built on first use and kept as long as the tokenizer lives."""
    index = _INDEXES.get(tokenizer)
    if index is None:
        index = VocabIndex(tokenizer.token_texts, tokenizer.special_ids)
        _INDEXES[tokenizer] = index
    return index


@dataclass(frozen=True)
class HoleLead:
    """A hole whose first position(s) must spell ``text``: its canvas row and [start, end) columns."""

    row: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class _Head:
    """The first masked position of a lead not yet spelled out, and what it must spell."""

    rest: str  # the part of the lead still to spell, from this position on
    logit_row: int | None  # its row in this step's logits; None when not eligible this step
    after: str  # "end" (the hole ends after it), "masked" (the next position is a mask) or "revealed"
    next_token: int  # the next position's token when "revealed"
    next_logit_row: int | None  # the next position's row in this step's logits (when eligible)


class LeadConstraint:
    """Per-position allowed tokens for healed holes, applied by the sampler before it picks tokens.

    Any order of reveals keeps the lead intact. At every step the first masked position of each unfinished
    lead (its *head*, with the part ``rest`` of the lead still to spell) may take:

    * a token whose text starts with ``rest`` (this finishes the lead), always;
    * a token that is a proper prefix of ``rest``, only when the position after it is in the hole and either
      still masked (and some token can start with what is left) or already holds a token that starts with
      what is left.

    Positions revealed in the same step are picked together, so when a head's pick is such a prefix, the next
    position is picked again at once from the tokens that start with what is left: both, either or neither
    may then be revealed, and the lead stays spelled whatever the order.

    The cost is paid only while a lead is unfinished: a gather of a few canvas positions (one host sync) and a
    mask over the vocabulary per head. Once every lead is spelled, :attr:`active` turns False and the sampler
    stops calling it.
    """

    def __init__(self, index: VocabIndex, leads: list[HoleLead], mask_id: int) -> None:
        self.index = index
        self.leads = [lead for lead in leads if lead.text and lead.end > lead.start]
        self.mask_id = mask_id
        self.active = bool(self.leads)
        self._flat: torch.Tensor | None = None
        self._chains: list[tuple[int, int]] = []  # per lead: (offset into the gathered values, length)
        self._masks: dict[tuple, torch.Tensor | None] = {}

    # --- the sampler's call ----------------------------------------------------------------------------

    def pick(self, logits: torch.Tensor, x: torch.Tensor, eligible: torch.Tensor, pick_fn):
        """Restrict the heads' logits (in place), pick with ``pick_fn(logits) -> Picked``, and re-pick a head's
        next position where the head picked a proper prefix of its lead. ``logits`` rows are the positions of
        ``eligible`` in row-major order, as the denoiser returns them."""
        heads = self._heads(x, eligible)
        if not heads:
            self.active = False
            return pick_fn(logits)
        width, device = logits.shape[-1], logits.device
        for h in heads:
            if h.logit_row is None:
                continue
            if h.after == "end":
                allowed = self._mask(("full", h.rest), width, device)
            elif h.after == "masked":
                allowed = self._mask(("open", h.rest), width, device)
            else:
                allowed = self._mask(("after", h.rest, h.next_token), width, device)
            if allowed is not None:
                logits[h.logit_row].masked_fill_(~allowed, float("-inf"))
        picked = pick_fn(logits)
        return self._repair(picked, heads, logits, pick_fn)

    def _repair(self, picked, heads: list[_Head], logits: torch.Tensor, pick_fn):
        """Where a head picked a proper prefix of its lead, pick its next position again from the tokens that
        carry on with the rest of the lead (the first pick did not know what the head would take)."""
        todo = [
            h
            for h in heads
            if h.logit_row is not None and h.after == "masked" and h.next_logit_row is not None
        ]
        if not todo:
            return picked
        chosen = picked.tokens[[h.logit_row for h in todo]].tolist()
        texts = self.index.texts
        width, device = logits.shape[-1], logits.device
        for h, token in zip(todo, chosen, strict=True):
            text = texts[token] if 0 <= token < len(texts) else ""
            if not text or text.startswith(h.rest) or not h.rest.startswith(text):
                continue
            allowed = self._mask(("full", h.rest[len(text) :]), width, device)
            if allowed is None:
                continue
            j = h.next_logit_row
            logits[j].masked_fill_(~allowed, float("-inf"))
            again = pick_fn(logits[j : j + 1])
            for mine, new in zip(picked, again, strict=True):
                if mine is not None and new is not None:
                    mine[j] = new[0]
        return picked

    # --- where each lead stands ------------------------------------------------------------------------

    def _heads(self, x: torch.Tensor, eligible: torch.Tensor) -> list[_Head]:
        """The head of every unfinished lead, read from the canvas in one gather."""
        if self._flat is None:
            flat, offset = [], 0
            for lead in self.leads:
                # a lead of n characters spans at most n tokens; one more position tells what follows
                n = min(lead.end - lead.start, len(lead.text) + 1)
                base = lead.row * x.shape[1] + lead.start
                flat.extend(range(base, base + n))
                self._chains.append((offset, n))
                offset += n
            self._flat = torch.tensor(flat, dtype=torch.long, device=x.device)
        flat_eligible = eligible.reshape(-1)
        rank = flat_eligible.long().cumsum(0) - 1
        values, is_eligible, rows = torch.stack(
            [x.reshape(-1)[self._flat], flat_eligible[self._flat].long(), rank[self._flat]]
        ).tolist()
        heads = []
        for lead, (offset, n) in zip(self.leads, self._chains, strict=True):
            head = self._walk(lead, values[offset : offset + n])
            if head is None:
                continue
            k, rest = head
            at = offset + k
            if k + 1 >= lead.end - lead.start:
                after, next_token, next_row = "end", -1, None
            else:
                next_token = values[at + 1]
                after = "masked" if next_token == self.mask_id else "revealed"
                next_row = rows[at + 1] if is_eligible[at + 1] else None
            heads.append(_Head(rest, rows[at] if is_eligible[at] else None, after, next_token, next_row))
        return heads

    def _walk(self, lead: HoleLead, values: list[int]) -> tuple[int, str] | None:
        """(offset of the head in the hole, the rest it must spell), or None when the lead is spelled."""
        rest, texts = lead.text, self.index.texts
        for k, token in enumerate(values):
            if token == self.mask_id:
                return k, rest
            text = texts[token] if 0 <= token < len(texts) else ""
            if text.startswith(rest) or not text or not rest.startswith(text):
                return None  # spelled (the last case cannot happen under the constraint: give up on it)
            rest = rest[len(text) :]
        return None

    # --- allowed-token masks ---------------------------------------------------------------------------

    def _mask(self, key: tuple, width: int, device) -> torch.Tensor | None:
        """A (width,) bool mask of the allowed ids, cached per request; None when nothing would be allowed
        (then the position is left free rather than made impossible)."""
        if key in self._masks:
            return self._masks[key]
        kind, rest = key[0], key[1]
        ids = self.index.starting_with(rest)
        extra: list[int] = []
        if kind == "open":  # a proper prefix of the rest, when some token can carry on after it
            for i in range(1, len(rest)):
                if self.index.has_prefix(rest[i:]):
                    extra.extend(self.index.exactly(rest[:i]))
        elif kind == "after":  # a proper prefix of the rest that the revealed next token carries on
            follow = self.index.texts[key[2]] if 0 <= key[2] < len(self.index.texts) else ""
            for i in range(1, len(rest)):
                if follow.startswith(rest[i:]):
                    extra.extend(self.index.exactly(rest[:i]))
        if extra:
            ids = torch.cat([ids, torch.tensor(extra, dtype=torch.long)])
        ids = ids[ids < width]
        mask = None
        if ids.numel():
            mask = torch.zeros(width, dtype=torch.bool)
            mask[ids] = True
            mask = mask.to(device)
        self._masks[key] = mask
        return mask


def lead_constraint(tokenizer, leads: list[HoleLead]) -> LeadConstraint | None:
    """The sampler constraint for ``leads`` (None when no hole has a lead: the sampler then runs as before)."""
    leads = [lead for lead in leads if lead.text]
    if not leads:
        return None
    return LeadConstraint(vocab_index(tokenizer), leads, tokenizer.mask_id)
