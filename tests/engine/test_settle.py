"""Settling: a caller that cuts what the model writes ends a hole once the text written so far decides the cut.

The sampler ends a settled span's masked positions as a revealed stop token ends them; ``infill_stream`` asks
each hole's test with the text from the hole's start to its first masked position, and the result is then that
text: the same tokens the unsettled run revealed, in fewer steps."""

from __future__ import annotations

import pytest
import torch

from diffucoder_lsp.engine.infill import infill
from diffucoder_lsp.engine.sampler import SamplingOptions, denoise, run_to_end

MASK, STOP, VOCAB = 7, 5, 40


class LeftToRight:
    """Surest of the leftmost masked position: reveals one position per step from left to right."""

    def __init__(self) -> None:
        self.asked: list[torch.Tensor] = []

    def __call__(self, x, valid, masked):
        self.asked.append(masked.clone())
        rows, cols = masked.nonzero(as_tuple=True)
        logits = torch.zeros(len(cols), VOCAB)
        logits[:, 20] = 10.0 - cols.float() * 0.1
        return logits


def test_a_settled_span_ends_its_masked_positions_at_once():
    x = torch.full((1, 12), MASK)
    x[0, 0] = 11
    x[0, 11] = 12
    calls = []

    def settle(canvas, masked):
        calls.append(canvas[0].tolist())
        written = int((canvas[0, 1:11] != MASK).sum())
        return [(0, 1 + written, 11)] if written == 3 else []

    den = LeftToRight()
    opts = SamplingOptions(temperature=0.0, alg="maskgit_plus")
    events, final = run_to_end(
        denoise(den, x, None, mask_id=MASK, options=opts, stop_ids=(STOP,), settle=settle)
    )
    assert len(events) == 3 and len(den.asked) == 3  # three written, then nothing left to ask
    assert sorted(events[2].cols.tolist()) == [3, *range(4, 11)]
    assert events[2].confidence[events[2].cols >= 4].eq(0).all()
    assert final[0, 1:4].eq(20).all() and final[0, 4:11].eq(STOP).all()
    assert calls[0][1] == 20 and calls[0][2] == MASK  # asked after each step's reveals
    # a settle that never fires changes nothing
    events, final = run_to_end(
        denoise(LeftToRight(), x, None, mask_id=MASK, options=opts, stop_ids=(STOP,), settle=lambda c, m: [])
    )
    assert len(events) == 10 and final[0, 1:11].eq(20).all()


GREEDY = SamplingOptions(temperature=0.0, tokens_per_step=1, block_size=8)


def test_a_settled_hole_is_the_text_written_when_its_test_said_so(lm):
    text = "def add(a, b):\n    return <|mask|>\n\nprint(add(1, 2))\n"
    whole = infill(lm, text, length=16, options=GREEDY, end_early=False)  # a fixed hole: every position
    full = whole.holes[0]
    asked: list[str] = []

    def decided(written: str) -> bool:
        asked.append(written)
        return len(lm.tokenizer.encode(written)) >= 4

    part = infill(lm, text, length=16, options=GREEDY, end_early=False, settle=[decided])
    hole = part.holes[0]
    assert asked and all(full.text.startswith(w) for w in asked)  # the hole's own text, lead taken off
    stops = lm.tokenizer.stop_ids
    first_stop = next(i for i, t in enumerate(hole.token_ids) if t in stops)
    written = hole.token_ids[:first_stop]
    assert written == full.token_ids[:first_stop]  # the same tokens, up to where it settled
    assert lm.tokenizer.decode(written).endswith(asked[-1]) and len(lm.tokenizer.encode(asked[-1])) >= 4
    assert part.steps < whole.steps
    # no test, or a test per hole that is None, decodes every position
    again = infill(lm, text, length=16, options=GREEDY, end_early=False, settle=[None])
    assert again.holes[0].token_ids == full.token_ids and again.steps == whole.steps


def test_settle_needs_one_test_per_hole(lm):
    with pytest.raises(ValueError, match="2 holes"):
        infill(lm, "a = <|mask|>\nb = <|mask|>\n", length=4, options=GREEDY, settle=[lambda w: True])
