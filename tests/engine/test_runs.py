"""Left-to-right runs (a threshold with blocks of one position): one step reveals the first masked position and
each next one, in canvas order, while the model is sure of it."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffucoder_lsp.engine.options import PARALLEL_BLOCK_SIZE, RUN_WINDOW, block_for_pace
from diffucoder_lsp.engine.sampler import SamplingOptions, denoise, run_positions, run_to_end

MASK = 7
VOCAB = 40
STOP = 5


class SureAt:
    """Near certain of token 20 at the columns in ``sure`` (all when None), flat elsewhere; records what it was
    asked about."""

    def __init__(self, sure: set[int] | None = None, stop_col: int | None = None) -> None:
        self.sure = sure
        self.stop_col = stop_col
        self.asked: list[torch.Tensor] = []
        self.forward_passes = 0

    def __call__(self, x, valid, masked):
        self.forward_passes += 1
        self.asked.append(masked.clone())
        cols = masked.nonzero(as_tuple=True)[1]
        logits = torch.zeros(len(cols), VOCAB)
        for i, c in enumerate(cols.tolist()):
            if self.sure is None or c in self.sure:
                logits[i, 20] = 40.0
            if c == self.stop_col:
                logits[i, STOP] = 80.0
        return logits


class Seeded:
    """Logits that depend on the canvas, some rows peaked and some flat, reproducible."""

    forward_passes = 0

    def __call__(self, x, valid, masked):
        self.forward_passes += 1
        g = torch.Generator().manual_seed(int(x.sum()) * 17 + int(masked.sum()))
        logits = torch.randn(int(masked.sum()), VOCAB, generator=g)
        peaked = torch.rand(logits.shape[0], generator=g) < 0.6
        logits[peaked, 20] += 12.0
        return logits


def _runs(threshold: float, **kw) -> SamplingOptions:
    return SamplingOptions(threshold=threshold, block_size=1, temperature=0.0, top_p=None, **kw)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=3),
    threshold=st.sampled_from([0.3, 0.9, 1.0]),
    floor=st.sampled_from([1, 2, 3]),
    gaps=st.lists(st.integers(0, 29), max_size=6),
)
def test_runs_reveal_each_position_once_left_to_right(lengths, threshold, floor, gaps):
    """Whatever the model's certainty: each masked position once, every step a prefix (in canvas order) of what
    is left of its row, at least ``floor`` of it, never more than the window; one pass per step."""
    width = max(lengths) + 1
    x = torch.full((len(lengths), width), MASK)
    valid = torch.zeros_like(x, dtype=torch.bool)
    for r, n in enumerate(lengths):
        valid[r, : n + 1] = True
    x[:, 0] = 11
    for c in gaps:  # context between holes
        if 0 < c < width:
            x[:, c] = 12
    x[~valid] = 0
    masked = (x == MASK) & valid
    left = [masked[r].nonzero().flatten().tolist() for r in range(x.shape[0])]
    den = Seeded()
    events, final = run_to_end(
        denoise(den, x, valid, mask_id=MASK, options=_runs(threshold, tokens_per_step=floor))
    )
    for ev in events:
        for r in range(x.shape[0]):
            got = sorted(ev.cols[ev.rows == r].tolist())
            assert got == left[r][: len(got)]
            assert min(floor, len(left[r])) <= len(got) <= RUN_WINDOW or not left[r]
            left[r] = left[r][len(got) :]
    assert all(not rest for rest in left)
    assert not ((final == MASK) & valid).any()
    assert den.forward_passes == len(events) <= math.ceil(int(masked.sum(1).max()) / floor)


def test_a_sure_model_goes_a_window_a_step_and_asks_only_about_the_window():
    x = torch.full((1, 21), MASK)
    x[0, 0] = 11
    den = SureAt()
    events, final = run_to_end(denoise(den, x, None, mask_id=MASK, options=_runs(0.9)))
    assert [len(ev.cols) for ev in events] == [RUN_WINDOW, RUN_WINDOW, 20 - 2 * RUN_WINDOW]
    assert [int(a.sum()) for a in den.asked] == [RUN_WINDOW, RUN_WINDOW, 20 - 2 * RUN_WINDOW]
    assert (final[0, 1:] == 20).all()


def test_a_run_stops_at_the_first_unsure_position():
    """Sure of columns 1-3 and 5-6, flat at 4: the first step takes 1-3 and stops at 4, even though 5 and 6 are
    sure; the second takes 4 (the first masked position always goes) and the sure ones after it."""
    x = torch.full((1, 10), MASK)
    x[0, 0] = 11
    den = SureAt(sure={1, 2, 3, 5, 6})
    events, _ = run_to_end(denoise(den, x, None, mask_id=MASK, options=_runs(0.9)))
    assert [sorted(ev.cols.tolist()) for ev in events[:3]] == [[1, 2, 3], [4, 5, 6], [7]]
    # unsure everywhere: one position a step, like a one-position block
    events, _ = run_to_end(denoise(SureAt(sure=set()), x, None, mask_id=MASK, options=_runs(0.9)))
    assert [ev.cols.tolist() for ev in events] == [[c] for c in range(1, 10)]


def test_a_stop_token_in_a_run_ends_its_span():
    x = torch.full((1, 14), MASK)
    x[0, 0] = 11
    den = SureAt(stop_col=3)
    opts = _runs(0.9)
    gen = denoise(den, x, None, mask_id=MASK, options=opts, stop_ids=(STOP,), end_spans=[(0, 1, 14)])
    events, final = run_to_end(gen)
    assert len(events) == 1 and den.forward_passes == 1  # the rest of the span is cut: never asked about
    assert final[0, 1:4].tolist() == [20, 20, STOP] and not (final == MASK).any()


def test_run_positions_definition():
    eligible = torch.tensor([[False, True, True, True, True], [True, True, False, False, False]])
    prob = torch.tensor([0.2, 0.95, 0.5, 0.99, 0.1, 0.1])  # row-major over the eligible positions
    take = run_positions(eligible, prob, 0.9, least=1)
    assert take.tolist() == [[False, True, True, False, False], [True, False, False, False, False]]
    take = run_positions(eligible, prob, 0.9, least=2)
    assert take.tolist() == [[False, True, True, False, False], [True, True, False, False, False]]


def test_run_options():
    assert _runs(0.9).runs and _runs(0.9).num_steps(10) == 10
    assert _runs(0.9, tokens_per_step=3).num_steps(10) >= 4
    assert not SamplingOptions(threshold=0.9, block_size=32).runs  # Fast-dLLM's blocks
    assert not SamplingOptions(threshold=0.9).runs and not SamplingOptions(block_size=1).runs
    # a threshold alone keeps the one-position order; more tokens a step or an entropy bound widen it
    assert block_for_pace(1, 1, bounded=False) == 1
    assert block_for_pace(1, 2, bounded=False) == block_for_pace(1, 1, bounded=True) == PARALLEL_BLOCK_SIZE
