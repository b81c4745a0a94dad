"""Ranked one-line fills: several candidate lines, each scored by how well the code after the hole follows it.

Why: a left-to-right decoder writes the line its prefix makes likely and never looks at what comes after the
hole, so it writes ``max_len = 0`` where the next lines use ``result``. The code after the hole is evidence
about the line, and a causal language model can weigh it exactly: by Bayes,
``p(line | prefix, suffix) ∝ p(line | prefix) · p(suffix | prefix, line)``. So: find the ``width`` likeliest
lines by beam search (one batched pass per token), then score every distinct line by one causal pass over
``line + suffix`` on top of the prefix's keys/values, and keep the best.

The score is ``prior_weight · log p(line | prefix) + log p(suffix | prefix, line)``. With the plain joint
(weight 1) short lines win too often (an empty line, a lone comment, a markdown fence are cheap to write and the
suffix reads almost as well after them); with 0 the prefix's own judgement is lost. Measured with the bundled
model's AR base (SmolLM2-135M) on every fifth HumanEval-Infilling single-line task (207, oracle length), when the
candidates were the 8 likeliest first tokens each continued greedily: greedy 23.7 %, weight 1.0 27.1 %, 0.75
28.0 %, 0.5 and 0.25 29.0 %, 0 25.1 %; the default is 0.5.

What held that back was the candidates, not the score: one of those 8 lines passed in 60 of the 207 tasks, and
the ranking picked one in 58. Such lines differ only in their first token, where ``max_len = 0`` and ``result
= []`` differ later. A beam search keeps the likeliest lines whatever token they differ at: on the same tasks a
passing line was among the beam's 8 in 98 (16 first tokens: 64; a beam of 4: 86), and the ranking picked one in
85 (41.3 %; weight 0.25: 87, 1.0: 84). The bundled diffusion model's own fill as one more candidate made it 88:
not worth a second decoder in every request. A beam of 16 (``--width 16``, twice the rows per pass) held one in
108 and the ranking picked 91 (44.0 %); the default stays 8, the width the full-set figures were measured at.

Only the first ``suffix_tokens`` (64) tokens after the line are scored: a line changes mostly how the next line
or two read, and every farther token's log-probability adds its noise to the sum. On 200 editor-like requests
(``eval calibrate --settings '{"rankLines": 8}'``: cursor mid-line, a 512-token context, so at most ~150 suffix
tokens) 64 tokens got 79 right (40 %) where 256 got 72 (36 %); the confidence gate then answers 53 % of requests
at 60.4 % precision (threshold 0.106) against 45 % at 60.0 %, and at the shipped threshold (0.1415) 45 % at
63.3 % against 44 % at 61.4 %; 2.4 s a request against 2.9 s (medians). On the 207 HumanEval tasks above, whose
suffixes are short (39 tokens on average), 86 passed either way (32 tokens: 86, 16: 82, 8: 81).

A blank line is a candidate only when every line found is blank: an editor shows nothing for it, and the engine
keeps holes from ending blank too (:mod:`.blank`). (On the 207 tasks above, with the first-token branches, blank
lines were picked 40 times at weight 0.5, and 2 of them passed, where the tested line was redundant: 29.0 % with
them, 28.0 % without.)

The model runs causally (``causal=True``): for a learned-lookahead model that is its AR self, without the
lookahead. The prefix boundary is healed as the engine heals holes: a prefix ending in a newline and
indentation is cut back to before the newline and the line must spell that lead first (BPE's usual
newline+indent token); otherwise the prefix's last token is backed off (:func:`~.healing.back_off`). A beam
whose lead is not yet spelled may only take tokens that carry on with it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..model.base_view import base_view
from ..model.network import DreamModel, KVSlots, project
from .healing import back_off, vocab_index

WIDTH = 8  # beams: candidate lines
PRIOR_WEIGHT = 0.5  # weight of log p(line | prefix) against log p(suffix | prefix, line)
SUFFIX_TOKENS = 64  # tokens of the suffix scored: the next lines (see the module docstring)
MAX_CONTEXT_TOKENS = 2048


@dataclass(frozen=True)
class RankedLine:
    """One candidate line (the text the hole gets, lead taken off) and its scores (natural log)."""

    text: str
    line_logprob: float
    suffix_logprob: float
    score: float
    token_ids: tuple[int, ...] = ()  # the tokens of lead + line, as scored
    token_logprobs: tuple[float, ...] = ()  # each one's log-probability (what a confidence statistic reads)


@dataclass(frozen=True)
class Ranking:
    """The candidates, best first; ``passes`` counts the model calls (prefix, decoding steps, scoring);
    ``lead`` is the prefix's text the lines' tokens re-spell first (token healing)."""

    candidates: tuple[RankedLine, ...]
    passes: int
    lead: str = ""

    @property
    def best(self) -> RankedLine:
        return self.candidates[0]


def split_prefix(tokenizer, prefix: str) -> tuple[list[int], str]:
    """(prompt ids, lead): the prefix without the lead that the line must spell first."""
    body = prefix.rstrip(" \t")
    if body.endswith("\n") and len(body) > 1:
        prompt = body[:-1]
        return tokenizer.encode(prompt), prefix[len(prompt) :]
    kept, ids, lead = back_off(tokenizer, prefix, tokenizer.encode(prefix))
    return ids, lead


def _allowed(index, rest: str) -> torch.Tensor:
    """Token ids that carry on with the unspelled lead ``rest``: they start with it, or are a proper prefix."""
    ids = [index.starting_with(rest)]
    for i in range(1, len(rest)):
        exact = index.exactly(rest[:i])
        if exact:
            ids.append(torch.tensor(exact, dtype=torch.long))
    return torch.cat(ids)


def _restricted(logprobs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``logprobs`` with every token outside ``allowed`` at -inf (unchanged when nothing is allowed)."""
    if allowed.numel() == 0:
        return logprobs
    out = torch.full_like(logprobs, float("-inf"))
    out[allowed] = logprobs[allowed]
    return out


def _never(tokenizer) -> list[int]:
    """Tokens no line is written with: the mask token (an adapted model's own row, which its base never saw)."""
    mask = getattr(tokenizer, "mask_id", None)
    return [mask] if isinstance(mask, int) and mask >= 0 else []


def line_of(text: str) -> str:
    """A one-line hole's text from what a beam wrote: its first line, leading blank lines skipped."""
    return text.lstrip("\n").split("\n", 1)[0] if text.strip() else ""


def _line_done(text: str) -> bool:
    rest = text.lstrip("\n")
    return "\n" in rest


@torch.no_grad()
def rank_line(
    model: DreamModel,
    tokenizer,
    prefix: str,
    suffix: str,
    *,
    width: int = WIDTH,
    max_tokens: int = 48,
    prior_weight: float = PRIOR_WEIGHT,
    suffix_tokens: int = SUFFIX_TOKENS,
    max_context_tokens: int = MAX_CONTEXT_TOKENS,
    should_stop: Callable[[], bool] | None = None,
) -> Ranking | None:
    """Rank up to ``width`` candidate lines for a hole between ``prefix`` and ``suffix`` (see the module).
    ``should_stop`` is asked before every pass after the first; None is returned when it says yes."""
    if width < 1 or max_tokens < 1:
        raise ValueError("width and max_tokens must be positive")
    device = model.lm_head.weight.device
    index = vocab_index(tokenizer)
    ids, lead = split_prefix(tokenizer, prefix)
    ids = ids[-max_context_tokens:] or [tokenizer.eos_id]
    n = len(ids)
    hidden, kvs = model.hidden_states(torch.tensor([ids], device=device), causal=True, return_kv=True)
    first = project(model.lm_head, hidden[:, -1]).float().log_softmax(-1)[0]
    choose = _restricted(first, _allowed(index, lead).to(device)) if lead else first.clone()
    choose[_never(tokenizer)] = float("-inf")
    budget = max_tokens + (1 if lead.startswith("\n") else 0)
    stop = should_stop or (lambda: False)
    found = _beam(model, tokenizer, index, kvs, n, choose, lead, budget, width, device, stop)
    if found is None or stop():
        return None
    rows, passes = found
    texts = []
    for row, _ in rows:
        if row and row[-1] == tokenizer.eos_id:
            row = row[:-1]
        text = tokenizer.decode(row)
        texts.append(line_of(text[len(lead) :] if text.startswith(lead) else text.lstrip("\n")))
    lines = list(dict.fromkeys(t for t in texts if t.strip())) or [""]  # the likeliest line first
    scored = _score(model, tokenizer, kvs, n, first, lead, lines, suffix, prior_weight, suffix_tokens, device)
    order = sorted(range(len(lines)), key=lambda i: -scored[i].score)
    return Ranking(tuple(scored[i] for i in order), 1 + passes + 1, lead)


def _beam(model, tokenizer, index, kvs, n, choose, lead, budget, width, device, stop):
    """The ``width`` most likely lines by beam search: ``(tokens, log p(tokens | prefix))`` pairs, best first,
    and the passes made; None when ``stop`` said to stop.

    Each step extends every open beam by its ``width`` likeliest next tokens and keeps the ``width`` best
    extensions; an extension that ends its line leaves the beam as a finished candidate. The search ends when
    every beam is finished, at ``budget`` tokens, or once ``width`` finished lines are likelier than any open
    beam can become (a log-probability only falls as tokens are added). The prefix's keys/values are the same
    in every beam, so reordering the beams moves only the keys/values of the tokens they wrote."""
    never = _never(tokenizer)
    top = choose.topk(min(width, max(1, int(torch.isfinite(choose).sum()))))
    allowed: dict[str, torch.Tensor] = {}

    def done(row: list[int]) -> bool:
        text = tokenizer.decode(row)
        return row[-1] == tokenizer.eos_id or (text.startswith(lead) and _line_done(text[len(lead) :]))

    finished: list[tuple[list[int], float]] = []
    beams: list[tuple[list[int], float]] = []
    for value, token in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        (finished if done([token]) else beams).append(([token], value))
    if beams and budget > 1:
        bufs = []
        for k, v in kvs:
            kb = k.new_empty(width, k.shape[1], n + budget, k.shape[3])  # one open beam can become width
            vb = v.new_empty(width, v.shape[1], n + budget, v.shape[3])
            kb[:, :, :n] = k
            vb[:, :, :n] = v
            bufs.append((kb, vb))
    passes = 0
    for i in range(1, budget):
        if not beams:
            break
        if len(finished) >= width and beams[0][1] < sorted(c for _, c in finished)[-width]:
            break
        if stop():
            return None
        b, m = len(beams), n + i  # keys after this step: prefix, i - 1 written tokens, this one
        slots = [KVSlots(kb[:b, :, :m], vb[:b, :, :m]) for kb, vb in bufs]
        h = model.hidden_states(
            torch.tensor([[row[-1]] for row, _ in beams], device=device),
            torch.ones(b, 1, dtype=torch.bool, device=device),
            torch.full((b, 1), m - 1, dtype=torch.long, device=device),
            extra_kv=slots,
            extra_valid=torch.ones(b, m - 1, dtype=torch.bool, device=device),
            causal=True,
        )
        passes += 1
        lp = project(model.lm_head, h[:, -1]).float().log_softmax(-1)
        lp[:, never] = float("-inf")
        options = []
        for r, (row, cum) in enumerate(beams):
            row_lp = lp[r]
            written = tokenizer.decode(row)
            if not written.startswith(lead):  # still spelling the lead: carry on with it
                rest = lead[len(written) :]
                if rest not in allowed:
                    allowed[rest] = _allowed(index, rest).to(device)
                row_lp = _restricted(row_lp, allowed[rest])
            best = row_lp.topk(width)
            options += [
                (cum + value, r, token)
                for value, token in zip(best.values.tolist(), best.indices.tolist(), strict=True)
                if value > float("-inf")
            ]
        options.sort(key=lambda o: -o[0])
        kept, parents = [], []
        for cum, r, token in options:
            if len(kept) == width:
                break
            row = beams[r][0] + [token]
            if done(row):
                finished.append((row, cum))
            else:
                kept.append((row, cum))
                parents.append(r)
        if parents and parents != list(range(len(parents))):
            index_rows = torch.tensor(parents, device=device)
            for kb, vb in bufs:  # only the written tokens' keys/values differ between beams
                kb[: len(parents), :, n:m] = kb[index_rows, :, n:m]
                vb[: len(parents), :, n:m] = vb[index_rows, :, n:m]
        beams = kept
    return sorted(finished + beams, key=lambda o: -o[1])[:width], passes


def _score(model, tokenizer, kvs, n, first, lead, lines, suffix, prior_weight, suffix_tokens, device):
    """One causal pass over ``lead + line + suffix`` per line (batched) on top of the prefix's keys/values."""
    tail = tokenizer.encode(suffix)[:suffix_tokens] if suffix_tokens > 0 else []
    heads = [tokenizer.encode(lead + line) for line in lines]
    rows = [h + tail for h in heads]
    out = []
    width = max(len(r) for r in rows)
    if width == 0:
        return [RankedLine(line, 0.0, 0.0, 0.0) for line in lines]
    r = len(rows)
    inp = torch.zeros(r, width, dtype=torch.long, device=device)
    valid = torch.zeros(r, width, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        if row:
            inp[i, : len(row)] = torch.tensor(row, device=device)
            valid[i, : len(row)] = True
    valid[:, 0] = True  # an empty row still needs one query
    extra = [(k.expand(r, -1, -1, -1), v.expand(r, -1, -1, -1)) for k, v in kvs]
    pos = (n + torch.arange(width, device=device)).expand(r, width)
    h = model.hidden_states(
        inp,
        valid,
        pos,
        extra_kv=extra,
        extra_valid=torch.ones(r, n, dtype=torch.bool, device=device),
        causal=True,
    )
    for i, row in enumerate(rows):
        per = []
        if row:
            per = [float(first[row[0]])]
            # row by row: every row's logits at once would be rows x tokens x vocabulary floats (~270 MB)
            if len(row) > 1:
                logits = project(model.lm_head, h[i, : len(row) - 1]).float()
                targets = torch.tensor(row[1:], device=device)[:, None]
                per += (logits.gather(-1, targets)[:, 0] - logits.logsumexp(-1)).tolist()
        m = len(heads[i])
        line_lp, suffix_lp = sum(per[:m]), sum(per[m:])
        score = prior_weight * line_lp + suffix_lp
        out.append(RankedLine(lines[i], line_lp, suffix_lp, score, tuple(heads[i]), tuple(per[:m])))
    return out


def rank_with(lm, prefix: str, suffix: str, **kwargs) -> Ranking | None:
    """:func:`rank_line` with a loaded model: an adapted one (the bundled default) ranks as its base
    (:mod:`diffucoder_lsp.model.base_view`), whose left-to-right judgement the adaptation did not wear down."""
    view = base_view(lm)
    with view.active() if view is not None else nullcontext():
        return rank_line(lm.model, lm.tokenizer, prefix, suffix, **kwargs)
