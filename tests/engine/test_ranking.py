"""Ranked one-line fills (engine/ranking.py) against a straightforward reference: uncached causal passes."""

from __future__ import annotations

import math

import pytest
import torch

from diffucoder_lsp.engine import ranking


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """(L, V) log-probabilities of the next token after each position: one full causal pass, no cache."""
    h = model.hidden_states(torch.tensor([ids]), causal=True)
    return model.lm_head(h)[0].float().log_softmax(-1)


def _reference_lines(lm, prefix: str, width: int, budget: int) -> list[str]:
    """Beam search over the line, one full causal pass per beam per token: keep the ``width`` likeliest
    extensions, set aside those that end their line, stop when ``width`` set-aside lines beat every open beam."""
    tok, model = lm.tokenizer, lm.model
    ids, lead = ranking.split_prefix(tok, prefix)
    texts = tok.token_texts

    def fits(t: int, rest: str) -> bool:
        s = texts[t] if 0 <= t < len(texts) else ""
        return t not in tok.special_ids and bool(s) and (s.startswith(rest) or rest.startswith(s))

    def masked(lp: torch.Tensor, written: str) -> torch.Tensor:
        lp = lp.clone()
        lp[tok.mask_id] = float("-inf")
        if not written.startswith(lead):
            rest = lead[len(written) :]
            keep = torch.tensor([fits(t, rest) for t in range(lp.numel())])
            if keep.any():
                lp[~keep] = float("-inf")
        return lp

    def done(row: list[int]) -> bool:
        text = tok.decode(row)
        return row[-1] == tok.eos_id or (text.startswith(lead) and "\n" in text[len(lead) :].lstrip("\n"))

    def extensions(row: list[int], cum: float) -> list[tuple[float, list[int]]]:
        lp = masked(_logprobs(model, ids + row)[-1], tok.decode(row))
        top = lp.topk(min(width, int(torch.isfinite(lp).sum())))
        return [(cum + float(v), row + [int(t)]) for v, t in zip(top.values, top.indices, strict=True)]

    finished, beams = [], []
    for cum, row in extensions([], 0.0):
        (finished if done(row) else beams).append((cum, row))
    for _ in range(budget - 1):
        if not beams or (len(finished) >= width and beams[0][0] < sorted(c for c, _ in finished)[-width]):
            break
        options = sorted((o for cum, row in beams for o in extensions(row, cum)), key=lambda o: -o[0])
        beams = []
        for cum, row in options:
            if len(beams) == width:
                break
            (finished if done(row) else beams).append((cum, row))
    out = []
    for _, row in sorted(finished + beams, key=lambda o: -o[0])[:width]:
        if row[-1] == tok.eos_id:
            row = row[:-1]
        text = tok.decode(row)
        out.append(ranking.line_of(text[len(lead) :] if text.startswith(lead) else text.lstrip("\n")))
    return out


PREFIXES = ["def add(a, b):\n    ", "def add(a, b):\n    return", "x = [1, 2, 3]\ny = "]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_candidates_are_the_lines_a_plain_beam_search_finds(lm, prefix):
    """The batched, cached beam search (beams reordered in place) finds the lines an uncached one does."""
    got = ranking.rank_line(lm.model, lm.tokenizer, prefix, "\n    return z\n", width=4, max_tokens=6)
    budget = 6 + (1 if ranking.split_prefix(lm.tokenizer, prefix)[1].startswith("\n") else 0)
    want = [t for t in _reference_lines(lm, prefix, 4, budget) if t.strip()]
    assert sorted(c.text for c in got.candidates) == sorted(set(want) or {""})
    assert all("\n" not in c.text for c in got.candidates)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_scores_equal_full_causal_passes_and_rank_by_the_weighted_sum(lm, prefix):
    """line_logprob = log p(lead + line | prompt), suffix_logprob = log p(suffix | prompt, lead + line),
    score = prior_weight * line + suffix, best first."""
    tok, model = lm.tokenizer, lm.model
    suffix = "\n    return a + b\n\nprint(add(1, 2))\n"
    got = ranking.rank_line(model, tok, prefix, suffix, width=5, max_tokens=5, prior_weight=0.3)
    ids, lead = ranking.split_prefix(tok, prefix)
    tail = tok.encode(suffix)
    for c in got.candidates:
        head = tok.encode(lead + c.text)
        lp = _logprobs(model, ids + head + tail)
        per = [float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(head + tail)]
        assert c.line_logprob == pytest.approx(sum(per[: len(head)]), abs=1e-3)
        assert c.suffix_logprob == pytest.approx(sum(per[len(head) :]), abs=1e-3)
        assert c.score == pytest.approx(0.3 * c.line_logprob + c.suffix_logprob)
    scores = [c.score for c in got.candidates]
    assert scores == sorted(scores, reverse=True) and got.best is got.candidates[0]
    assert got.passes >= 2 and all(math.isfinite(s) for s in scores)


def test_with_no_prior_the_suffix_alone_orders_the_candidates(lm):
    """prior_weight 0: the pick is the candidate the suffix follows best, whatever the suffix."""
    tok, model = lm.tokenizer, lm.model
    for suffix in ("\n    return a\n", "\n    return b * 2\n", "\n\nclass X:\n    pass\n"):
        got = ranking.rank_line(model, tok, PREFIXES[2], suffix, width=6, max_tokens=4, prior_weight=0)
        order = [c.suffix_logprob for c in got.candidates]
        assert order == sorted(order, reverse=True) and len(order) > 1


def test_lead_is_spelled_and_taken_off(lm):
    """A prefix ending in newline + indent is cut before the newline; every branch spells that lead first
    (or ends), and the line returned does not repeat it."""
    tok = lm.tokenizer
    ids, lead = ranking.split_prefix(tok, "if x:\n        ")
    assert lead == "\n        " and tok.decode(ids) == "if x:"
    ids, lead = ranking.split_prefix(tok, "return a +")
    assert tok.decode(ids) + lead == "return a +" and lead
    assert ranking.line_of("\n\n  a = 1\n  b = 2") == "  a = 1"
    assert ranking.line_of("  \n") == ""


def test_bad_arguments_are_refused(lm):
    with pytest.raises(ValueError):
        ranking.rank_line(lm.model, lm.tokenizer, "x = ", "", width=0)
    with pytest.raises(ValueError):
        ranking.rank_line(lm.model, lm.tokenizer, "x = ", "", max_tokens=0)


def test_empty_prefix_and_suffix_still_rank(lm):
    got = ranking.rank_line(lm.model, lm.tokenizer, "", "", width=3, max_tokens=3)
    assert 1 <= len(got.candidates) <= 3


def test_only_the_first_suffix_tokens_are_scored(lm):
    """``suffix_tokens`` caps the code after the line that the score reads: its first N tokens count, what
    follows them changes nothing (the default is small: far tokens add noise, not evidence)."""
    tok, model = lm.tokenizer, lm.model
    near = "\n    return a + b\n"
    n = len(tok.encode(near))
    a = ranking.rank_line(
        model, tok, PREFIXES[0], near + "\nprint(1)\n", width=4, max_tokens=4, suffix_tokens=n
    )
    b = ranking.rank_line(
        model, tok, PREFIXES[0], near + "\nx = [9] * 3\n", width=4, max_tokens=4, suffix_tokens=n
    )
    assert [(c.text, c.suffix_logprob) for c in a.candidates] == [
        (c.text, c.suffix_logprob) for c in b.candidates
    ]
    ids, lead = ranking.split_prefix(tok, PREFIXES[0])
    tail = tok.encode(near + "\nprint(1)\n")[:n]  # the suffix's own tokens, cut: not near's alone
    for c in a.candidates:
        head = tok.encode(lead + c.text)
        lp = _logprobs(model, ids + head + tail)
        want = sum(float(lp[len(ids) - 1 + len(head) + i, t]) for i, t in enumerate(tail))
        assert c.suffix_logprob == pytest.approx(want, abs=1e-3)
    assert 0 < ranking.SUFFIX_TOKENS <= 64
