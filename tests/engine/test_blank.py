"""A hole does not end blank: the stop tokens are kept from a hole's first masked position while what the hole
wrote before it is whitespace only (engine/blank.py), on every path but the exact reference decoder."""

from __future__ import annotations

import pytest
import torch

from diffucoder_lsp.engine.batch import BatchRow, infill_batch
from diffucoder_lsp.engine.blank import NonBlankStart, hole_constraint
from diffucoder_lsp.engine.choice import pick_tokens
from diffucoder_lsp.engine.healing import vocab_index
from diffucoder_lsp.engine.infill import infill, prepare_infill
from diffucoder_lsp.engine.sampler import SamplingOptions

M = "<|mask|>"
GREEDY = SamplingOptions(temperature=0.0)


def one_id(tok, text: str) -> int:
    return vocab_index(tok).exactly(text)[0]


def greedy(logits):
    return pick_tokens(logits, GREEDY, None)


def step(lm, tok, written: dict[int, int], prefer: list[dict[int, float]], eligible_from: int = 0, lead=""):
    """One guarded pick on ``ctx + 4 masks`` with some hole positions revealed (``written``)."""
    ctx = tok.encode("x = 1\n")
    a = len(ctx)
    x = torch.tensor([ctx + [tok.mask_id] * 4])
    for k, t in written.items():
        x[0, a + k] = t
    eligible = x == tok.mask_id
    eligible[0, : a + eligible_from] = False
    logits = torch.zeros(int(eligible.sum()), lm.config.vocab_size)
    for row, scores in enumerate(prefer):
        for t, v in scores.items():
            logits[row, t] = v
    guard = NonBlankStart(None, [(0, a, a + 4, lead)], tok.token_texts, tok.stop_ids, tok.mask_id)
    return guard.pick(logits, x, eligible, greedy).tokens.tolist(), guard


def test_a_blank_hole_cannot_end_and_a_written_one_can(lm, tok):
    eos, sp3, name = tok.eos_id, one_id(tok, "   "), tok.encode("x")[0]
    # nothing written: no position may take the end token
    picked, guard = step(lm, tok, {}, [{eos: 10, name: 5}] * 4)
    assert picked == [name] * 4 and guard.active
    # only an indent written: still blank
    picked, guard = step(lm, tok, {0: sp3}, [{eos: 10, name: 5}] * 3)
    assert picked == [name] * 3 and guard.active
    # a name written: the hole may end now, and the guard lets go of it
    picked, guard = step(lm, tok, {0: sp3, 1: name}, [{eos: 10, name: 5}] * 2)
    assert picked == [eos, eos] and not guard.active
    # the hole already ended (a stop revealed): nothing to guard
    picked, guard = step(lm, tok, {0: eos}, [{eos: 10, name: 5}] * 3)
    assert picked == [eos] * 3 and not guard.active


def test_positions_after_written_text_may_end_in_any_order(lm, tok):
    eos, name = tok.eos_id, tok.encode("x")[0]
    # the second position holds a name, the first is still masked: it is held, the ones after the name are not
    picked, guard = step(lm, tok, {1: name}, [{eos: 10, name: 5}] * 3)
    assert picked == [name, eos, eos] and guard.active
    # positions outside this step's block are left alone
    picked, _ = step(lm, tok, {1: name}, [{eos: 10, name: 5}] * 2, eligible_from=2)
    assert picked == [eos, eos]


def test_the_healed_lead_is_not_text(lm, tok):
    eos, nl, name = tok.eos_id, one_id(tok, "\n"), tok.encode("x")[0]
    picked, guard = step(lm, tok, {0: nl}, [{eos: 10, name: 5}] * 3, lead="\n")
    assert picked == [name] * 3 and guard.active
    picked, guard = step(
        lm, tok, {0: name}, [{eos: 10, name: 5}] * 3, lead="x"
    )  # a word's lead: still no text
    assert picked == [name] * 3 and guard.active


class PrefersTheEnd:
    """A denoiser whose first choice is always the end token, then one name: the model that ends a hole blank."""

    def __init__(self, lm, name: int) -> None:
        self.vocab, self.eos, self.name = lm.config.vocab_size, lm.tokenizer.eos_id, name

    def __call__(self, x, valid, eligible):
        logits = torch.zeros(int(eligible.sum()), self.vocab)
        logits[:, self.eos] = 10.0
        logits[:, self.name] = 5.0
        return logits


@pytest.mark.parametrize("opts", [dict(), dict(block_size=1), dict(block_size=4, threshold=0.5)])
def test_a_fill_that_would_end_blank_writes_text_instead(lm, tok, opts):
    name = tok.encode("x")[0]
    text = f"def f():\n{M}\n"
    res = infill(
        lm, text, length=6, options=SamplingOptions(temperature=0.0, **opts), denoiser=PrefersTheEnd(lm, name)
    )
    assert res.holes[0].text.strip() != "", res.holes[0]
    # the reference decoder is left as it is: it ends blank
    exact = SamplingOptions(exact=True, steps=6, temperature=0.0)
    ref = infill(lm, text, length=6, options=exact, denoiser=PrefersTheEnd(lm, name))
    assert ref.holes[0].text.strip() == ""


def test_batched_rows_are_guarded_each_on_its_own_holes(lm, tok):
    name = tok.encode("x")[0]
    canvases = [prepare_infill(tok, t, length=5, heal=True) for t in (f"a = {M}\n", f"def g():\n{M}\n{M}\n")]
    rows = [BatchRow(canvas=c) for c in canvases]
    opts = SamplingOptions(temperature=0.0, block_size=1)
    gen = infill_batch(lm, rows, options=opts, denoiser=PrefersTheEnd(lm, name))
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            results = stop.value
            break
    assert [len(r.holes) for r in results] == [1, 2]
    assert all(h.text.strip() for r in results for h in r.holes)


def test_the_guard_is_asked_for(tok):
    canvas = prepare_infill(tok, f"x = {M}\n", length=4)
    assert hole_constraint(tok, [(0, canvas)], nonblank=False) is None
    assert isinstance(hole_constraint(tok, [(0, canvas)], nonblank=True), NonBlankStart)
