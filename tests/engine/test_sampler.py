"""Properties of the one sampler, on fake denoisers (fast) and on a tiny real model (padding equivalence)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from diffucoder_lsp.engine.choice import entropy
from diffucoder_lsp.engine.sampler import (
    ALGORITHMS,
    SamplingOptions,
    balanced_count,
    denoise,
    entropy_bounded_count,
    reference_schedule,
    run_to_end,
)
from diffucoder_lsp.errors import BadInputError

MASK = 7
VOCAB = 40


class RandomDenoiser:
    """Logits that depend on the canvas content (so steps differ) but are reproducible."""

    def __init__(self, vocab: int = VOCAB, hot: dict[int, float] | None = None) -> None:
        self.vocab = vocab
        self.hot = hot or {}
        self.forward_passes = 0

    def __call__(self, x, valid, masked):
        self.forward_passes += 1
        g = torch.Generator().manual_seed(int(x.sum()) * 31 + int(masked.sum()))
        logits = torch.randn(int(masked.sum()), self.vocab, generator=g) * 3
        for token, value in self.hot.items():
            logits[:, token] = value
        return logits


def make_canvas(lengths: list[int], masks: list[list[int]], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    x = torch.randint(10, VOCAB, (len(lengths), width), generator=g)
    valid = torch.zeros(len(lengths), width, dtype=torch.bool)
    for r, n in enumerate(lengths):
        valid[r, :n] = True
        for c in masks[r]:
            if c < n:
                x[r, c] = MASK
    x[~valid] = 0
    return x, valid


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 24), st.lists(st.integers(0, 23), min_size=1, max_size=16)),
        min_size=1,
        max_size=3,
    ),
    alg=st.sampled_from(ALGORITHMS),
    exact=st.booleans(),
    temperature=st.sampled_from([0.0, 0.7]),
    steps=st.one_of(st.none(), st.integers(1, 12)),
    alg_temp=st.sampled_from([0.0, 0.5]),
)
def test_context_kept_all_revealed_once(rows, alg, exact, temperature, steps, alg_temp):
    lengths = [n for n, _ in rows]
    x, valid = make_canvas(lengths, [m for _, m in rows])
    masked0 = (x == MASK) & valid
    opts = SamplingOptions(steps=steps, alg=alg, exact=exact, temperature=temperature, alg_temp=alg_temp)
    events, final = run_to_end(denoise(RandomDenoiser(), x, valid, mask_id=MASK, options=opts))
    # context and padding never change
    assert torch.equal(final[~masked0], x[~masked0])
    # no mask remains
    assert not ((final == MASK) & valid).any()
    # each masked position revealed exactly once, to the token the event says
    seen = torch.zeros_like(x, dtype=torch.long)
    for ev in events:
        seen[ev.rows, ev.cols] += 1
        assert torch.equal(final[ev.rows, ev.cols], ev.tokens)
    assert torch.equal(seen, masked0.long())
    if masked0.any() and alg != "origin" and not exact:
        # balanced schedule: one pass per step, finishing early when there are more steps than tokens
        most = int(masked0.sum(1).max())
        assert len(events) == min(opts.num_steps(most), most)


def independent_reference_counts(masked: int, steps: int) -> list[int]:
    """The reference schedule written out again, from the formula in the facts doc."""
    eps = 1e-3
    out, left = [], masked
    for i in range(steps):
        t = 1 - (1 - eps) * i / steps
        s = 1 - (1 - eps) * (i + 1) / steps
        k = left if i == steps - 1 else int(left * (1 - s / t))
        out.append(k)
        left -= k
    return out


@pytest.mark.parametrize("masked,steps", [(32, 32), (32, 8), (64, 16), (5, 5), (17, 3), (100, 7)])
def test_exact_schedule_matches_formula(masked, steps):
    x = torch.full((1, masked + 4), MASK)
    x[0, :2] = 11
    x[0, -2:] = 12
    opts = SamplingOptions(steps=steps, exact=True, temperature=0.0)
    events, _ = run_to_end(denoise(RandomDenoiser(), x, None, mask_id=MASK, options=opts))
    counts = [len(ev.cols) for ev in events]
    expected = independent_reference_counts(masked, steps)
    assert counts == expected
    assert reference_schedule(masked, steps) == expected
    # the reference wastes early steps: with one token per step the first step reveals nothing
    if masked == steps:
        assert counts[0] == 0


def test_fast_schedule_reveals_every_step():
    x = torch.full((1, 20), MASK)
    opts = SamplingOptions(steps=6, temperature=0.0)
    events, _ = run_to_end(denoise(RandomDenoiser(), x, None, mask_id=MASK, options=opts))
    counts = [len(ev.cols) for ev in events]
    assert len(counts) == 6 and min(counts) >= 1 and sum(counts) == 20
    assert torch.equal(balanced_count(torch.tensor([20, 3]), 6), torch.tensor([4, 1]))


def test_tokens_per_step_sets_steps():
    x = torch.full((1, 16), MASK)
    den = RandomDenoiser()
    events, _ = run_to_end(denoise(den, x, None, mask_id=MASK, options=SamplingOptions(tokens_per_step=4)))
    assert len(events) == 4 and den.forward_passes == 4
    assert all(len(ev.cols) == 4 for ev in events)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_seed_determinism(temperature):
    x, valid = make_canvas([20, 15], [list(range(3, 18)), list(range(0, 15, 2))])
    opts = SamplingOptions(temperature=temperature, seed=123, alg_temp=0.3 if temperature else 0.0)
    a = run_to_end(denoise(RandomDenoiser(), x, valid, mask_id=MASK, options=opts))[1]
    b = run_to_end(denoise(RandomDenoiser(), x, valid, mask_id=MASK, options=opts))[1]
    assert torch.equal(a, b)
    if temperature:
        other = SamplingOptions(temperature=temperature, seed=124, alg_temp=0.3)
        c = run_to_end(denoise(RandomDenoiser(), x, valid, mask_id=MASK, options=other))[1]
        assert not torch.equal(a, c)


def test_never_samples_outside_vocab_or_mask():
    # The denoiser strongly prefers ids past the tokenizer and the mask id itself: neither may appear.
    den = RandomDenoiser(vocab=VOCAB + 8, hot={VOCAB + 3: 50.0, MASK: 49.0})
    x = torch.full((2, 12), MASK)
    for temperature in (0.0, 1.0):
        opts = SamplingOptions(temperature=temperature, top_p=None)
        _, final = run_to_end(denoise(den, x, None, mask_id=MASK, options=opts, allowed_vocab=VOCAB))
        assert int(final.max()) < VOCAB
        assert not (final == MASK).any()


def test_eos_penalty_suppresses_stop_tokens():
    eos = 3
    den = RandomDenoiser(hot={eos: 30.0})
    x = torch.full((1, 24), MASK)
    plain = run_to_end(denoise(den, x, None, mask_id=MASK, options=SamplingOptions(temperature=0.0)))[1]
    opts = SamplingOptions(temperature=0.0, eos_penalty=100.0)
    penalised = run_to_end(denoise(den, x, None, mask_id=MASK, options=opts, stop_ids=(eos,)))[1]
    assert (plain == eos).all()
    assert not (penalised == eos).any()


def test_confidence_algorithms_order_positions():
    """With 1 token per step, maskgit_plus reveals the position whose top probability is highest first."""
    sure, unsure = 5, 1

    # The fixed denoiser prefers token 20 at canvas position `sure` strongly and is flat at position `unsure`.
    class Fixed:
        forward_passes = 0

        def __call__(self, x, valid, masked):
            cols = masked.nonzero(as_tuple=True)[1]
            logits = torch.zeros(len(cols), VOCAB)
            for i, c in enumerate(cols.tolist()):
                logits[i, 20] = 9.0 if c == sure else 0.1
            return logits

    x = torch.full((1, 8), 11)
    x[0, [sure, unsure]] = MASK
    for alg in ("maskgit_plus", "topk_margin", "entropy"):
        opts = SamplingOptions(temperature=0.0, alg=alg, steps=2)
        events, _ = run_to_end(denoise(Fixed(), x, None, mask_id=MASK, options=opts))
        assert events[0].cols.tolist() == [sure], alg


def test_cancel_by_closing_the_generator():
    den = RandomDenoiser()
    gen = denoise(den, torch.full((1, 30), MASK), None, mask_id=MASK, options=SamplingOptions())
    next(gen)
    next(gen)
    gen.close()
    assert den.forward_passes == 2


def test_invalid_options_are_bad_input():
    for kwargs in ({"alg": "nope"}, {"steps": 0}, {"temperature": -1}, {"top_p": 0}, {"tokens_per_step": 0}):
        with pytest.raises(BadInputError):
            SamplingOptions(**kwargs)


def test_no_masks_returns_input_without_calling_model():
    den = RandomDenoiser()
    x = torch.arange(10, 20)[None]
    events, final = run_to_end(denoise(den, x, None, mask_id=MASK, options=SamplingOptions()))
    assert events == [] and torch.equal(final, x) and den.forward_passes == 0


def test_per_row_groups_events():
    x, valid = make_canvas([6, 6], [[1, 2], [4]])
    events, _ = run_to_end(
        denoise(RandomDenoiser(), x, valid, mask_id=MASK, options=SamplingOptions(tokens_per_step=3))
    )
    rows = events[0].per_row(2)
    assert sorted(c for c, _, _ in rows[0]) == [1, 2] and [c for c, _, _ in rows[1]] == [4]
    assert all(math.isfinite(p) for _, _, p in rows[0])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    threshold=st.sampled_from([0.05, 0.3, 0.9, 1.0]),
    temperature=st.sampled_from([0.0, 0.5]),
    floor=st.sampled_from([1, 2, 5]),
)
def test_threshold_reveals_every_position_once(n, threshold, temperature, floor):
    x = torch.full((2, n + 2), MASK)
    x[:, 0] = 11
    opts = SamplingOptions(threshold=threshold, temperature=temperature, tokens_per_step=floor)
    den = RandomDenoiser()
    events, final = run_to_end(denoise(den, x, None, mask_id=MASK, options=opts))
    _assert_each_once_at_least_floor(x, events, final, floor)
    assert den.forward_passes == len(events) <= math.ceil((n + 1) / floor)


def _assert_each_once_at_least_floor(x, events, final, floor: int) -> None:
    """Every masked position of ``x`` revealed exactly once, and every row at least ``floor`` a step (or all it
    has left)."""
    seen = torch.zeros_like(x)
    left = [int((x[r] == MASK).sum()) for r in range(x.shape[0])]
    for ev in events:
        seen[ev.rows, ev.cols] += 1
        for r in range(x.shape[0]):
            got = int((ev.rows == r).sum())
            assert got >= min(floor, left[r])
            left[r] -= got
    assert torch.equal(seen, (x == MASK).long())
    assert not (final == MASK).any()


def test_threshold_adapts_steps_to_certainty():
    """A model sure of everything finishes in one step; an unsure one goes one token per step."""
    x = torch.full((1, 12), MASK)
    sure = RandomDenoiser(hot={20: 60.0})
    events, _ = run_to_end(denoise(sure, x, None, mask_id=MASK, options=SamplingOptions(threshold=0.9)))
    assert len(events) == 1 and len(events[0].cols) == 12
    flat = RandomDenoiser()
    opts = SamplingOptions(threshold=0.999, temperature=0.0)
    events, _ = run_to_end(denoise(flat, x, None, mask_id=MASK, options=opts))
    assert len(events) == 12


def test_threshold_tops_up_to_tokens_per_step_with_the_most_confident():
    """Nothing passes the threshold: each step reveals exactly tokens_per_step, the most confident first."""

    class RisingDenoiser:  # token 20's logit grows with the position: later positions are surer
        forward_passes = 0

        def __call__(self, x, valid, masked):
            cols = masked.nonzero(as_tuple=True)[1]
            logits = torch.zeros(len(cols), VOCAB)
            logits[:, 20] = (cols.float() + 1) * 0.3
            return logits

    x = torch.full((1, 12), MASK)
    opts = SamplingOptions(threshold=0.999, temperature=0.0, tokens_per_step=4, alg="maskgit_plus")
    events, final = run_to_end(denoise(RisingDenoiser(), x, None, mask_id=MASK, options=opts))
    assert [sorted(ev.cols.tolist()) for ev in events] == [[8, 9, 10, 11], [4, 5, 6, 7], [0, 1, 2, 3]]
    assert all(ev.total_steps == 3 for ev in events)
    assert (final == 20).all()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 30), st.lists(st.integers(0, 29), min_size=1, max_size=24)),
        min_size=1,
        max_size=3,
    ),
    block=st.integers(1, 9),
    pace=st.integers(1, 4),
    rule=st.sampled_from([None, ("threshold", 0.3), ("threshold", 0.95), ("bound", 0.0), ("bound", 2.0)]),
    alg=st.sampled_from(["entropy", "maskgit_plus", "topk_margin"]),
)
def test_block_decoding_reveals_in_block_order_each_once(rows, block, pace, rule, alg):
    """Every masked position is revealed once, and never before every position of an earlier block is. (A
    threshold with blocks of one position makes left-to-right runs instead: tests/engine/test_runs.py.)"""
    assume(not (block == 1 and rule and rule[0] == "threshold"))
    lengths = [n for n, _ in rows]
    x, valid = make_canvas(lengths, [m for _, m in rows])
    masked0 = (x == MASK) & valid
    threshold = rule[1] if rule and rule[0] == "threshold" else None
    bound = rule[1] if rule and rule[0] == "bound" else None
    opts = SamplingOptions(
        block_size=block,
        tokens_per_step=pace,
        threshold=threshold,
        entropy_bound=bound,
        alg=alg,
        temperature=0.0,
    )
    asked = []

    class Recording(RandomDenoiser):
        def __call__(self, x, valid, masked):
            asked.append(masked.clone())
            return super().__call__(x, valid, masked)

    den = Recording()
    events, final = run_to_end(denoise(den, x, valid, mask_id=MASK, options=opts))
    assert not ((final == MASK) & valid).any()
    order = masked0.long().cumsum(1) - 1  # ordinal of each masked position in its row
    seen = torch.zeros_like(x, dtype=torch.long)
    for ev, eligible in zip(events, asked, strict=True):
        seen[ev.rows, ev.cols] += 1
        assert eligible[ev.rows, ev.cols].all()  # revealed only what the denoiser was asked about
        for r in range(x.shape[0]):
            blocks = (order[r][eligible[r]] // block).unique()
            assert blocks.numel() <= 1  # one block per row per step
            got = int((ev.rows == r).sum())
            left = int(eligible[r].sum())
            if rule is None:
                assert got == min(pace, left)
            else:
                assert got >= min(pace, left)
        # positions of later blocks are still masked when a block is asked about
        for r, c in zip(*eligible.nonzero(as_tuple=True), strict=True):
            earlier = masked0[r] & (order[r] // block < order[r, c] // block)
            assert not (earlier & (x[r] == MASK) & (seen[r] == 0)).any()
    assert torch.equal(seen, masked0.long())
    most = opts.num_steps(int(masked0.sum(1).max()), masked0.sum(1).tolist())
    if not masked0.any():
        assert events == []
    elif rule is None:
        assert len(events) == most  # the block schedule is exact without an adaptive rule
    else:
        assert len(events) <= most


def test_block_steps_sum_block_by_block():
    opts = SamplingOptions(block_size=32, tokens_per_step=3)
    # 64 = two blocks of 11 steps; 40 = 11 + ceil(8 / 3)
    assert opts.num_steps(64, [64, 40]) == 22
    assert opts.num_steps(40, [40]) == 14
    # --steps sets the pace: 64 tokens in 8 steps is 8 a step, 4 steps per block
    assert SamplingOptions(block_size=32, steps=8).num_steps(64, [64]) == 8
    with pytest.raises(BadInputError):
        SamplingOptions(block_size=0)
    with pytest.raises(BadInputError):
        SamplingOptions(block_size=8, exact=True)
    with pytest.raises(BadInputError):
        SamplingOptions(block_size=8, alg="origin")


def _brute_force_bound_count(conf: list[float], ent: list[float], bound: float) -> int:
    """The definition, checked run by run: the longest leading run (by descending confidence) whose summed
    entropy exceeds its largest by at most ``bound``."""
    order = sorted(range(len(conf)), key=lambda i: -conf[i])
    best = 0
    for n in range(1, len(order) + 1):
        hs = [ent[i] for i in order[:n]]
        if sum(hs) - max(hs) <= bound:
            best = n
    return best


@settings(max_examples=60, deadline=None)
@given(
    cells=st.lists(st.tuples(st.floats(0, 5), st.booleans()), min_size=1, max_size=12),
    bound=st.sampled_from([0.0, 0.1, 0.5, 2.0, 50.0]),
)
def test_entropy_bounded_count_matches_its_definition(cells, bound):
    ent = torch.tensor([[h for h, _ in cells]])
    eligible = torch.tensor([[e for _, e in cells]])
    conf = -ent  # the entropy algorithm's confidence
    got = int(entropy_bounded_count(conf, ent, eligible, bound)[0])
    idx = [i for i, (_, e) in enumerate(cells) if e]
    confs, ents = [-cells[i][0] for i in idx], [cells[i][0] for i in idx]
    # float32 sums may land either side of a run that hits the bound exactly: allow that much
    lo = _brute_force_bound_count(confs, ents, bound - 1e-4)
    hi = _brute_force_bound_count(confs, ents, bound + 1e-4)
    assert lo <= got <= hi
    assert (got >= 1) == bool(idx)  # one position always fits: its sum equals its maximum


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    bound=st.sampled_from([0.0, 0.05, 1.0, 10.0]),
    temperature=st.sampled_from([0.0, 0.5]),
    floor=st.sampled_from([1, 3]),
    alg=st.sampled_from(["entropy", "maskgit_plus", "topk_margin"]),
)
def test_entropy_bound_reveals_every_position_once(n, bound, temperature, floor, alg):
    x = torch.full((2, n + 2), MASK)
    x[:, 0] = 11
    x[1, n + 1] = 12  # rows with different counts
    opts = SamplingOptions(entropy_bound=bound, temperature=temperature, tokens_per_step=floor, alg=alg)
    den = RandomDenoiser()
    events, final = run_to_end(denoise(den, x, None, mask_id=MASK, options=opts))
    _assert_each_once_at_least_floor(x, events, final, floor)
    assert den.forward_passes == len(events) <= math.ceil((n + 1) / floor)


def test_entropy_bound_takes_sure_runs_and_stops_at_the_unsure():
    """Positions 0-5 are near certain, 6-11 flat: a bound of 0.5 nats takes the sure six in one step (plus at
    most one unsure one, whose entropy is the run's maximum), then the flat ones one at a time."""

    class HalfSure:
        forward_passes = 0

        def __call__(self, x, valid, masked):
            cols = masked.nonzero(as_tuple=True)[1]
            logits = torch.zeros(len(cols), VOCAB)
            logits[cols < 6, 20] = 40.0
            return logits

    x = torch.full((1, 12), MASK)
    opts = SamplingOptions(entropy_bound=0.5, temperature=0.0, top_p=None)
    events, final = run_to_end(denoise(HalfSure(), x, None, mask_id=MASK, options=opts))
    first = sorted(events[0].cols.tolist())
    assert first[:6] == [0, 1, 2, 3, 4, 5] and len(first) == 7
    assert [len(ev.cols) for ev in events[1:]] == [1] * 5
    flat = math.log(VOCAB - 1)  # every id but the mask is equally likely
    assert float(entropy(torch.full((1, VOCAB - 1), 1 / (VOCAB - 1)))[0]) == pytest.approx(flat, rel=1e-4)
    # a bound above one flat position's entropy lets two of them go together
    opts = SamplingOptions(entropy_bound=flat + 0.01, temperature=0.0, top_p=None)
    events, _ = run_to_end(denoise(HalfSure(), x, None, mask_id=MASK, options=opts))
    assert [len(ev.cols) for ev in events] == [8, 2, 2]


def test_entropy_bound_options():
    assert SamplingOptions(entropy_bound=0.1).adaptive
    assert SamplingOptions(entropy_bound=0.1, tokens_per_step=4).num_steps(10) == 3
    for bad in (
        dict(entropy_bound=-0.1),
        dict(entropy_bound=float("nan")),
        dict(entropy_bound=0.1, threshold=0.9),
        dict(entropy_bound=0.1, exact=True),
        dict(entropy_bound=0.1, alg="origin"),
    ):
        with pytest.raises(BadInputError):
            SamplingOptions(**bad)


STOP = 5


class StopAt:
    """Sure of token 20 everywhere, and surest of all of the stop token at ``stop_col``."""

    def __init__(self, stop_col: int) -> None:
        self.stop_col = stop_col
        self.asked: list[torch.Tensor] = []
        self.seen: list[torch.Tensor] = []
        self.forward_passes = 0

    def __call__(self, x, valid, masked):
        self.forward_passes += 1
        self.asked.append(masked.clone())
        self.seen.append(x.clone())
        cols = masked.nonzero(as_tuple=True)[1]
        logits = torch.zeros(len(cols), VOCAB)
        logits[:, 20] = 5.0
        logits[cols == self.stop_col, STOP] = 50.0
        return logits


def test_an_end_span_stops_denoising_after_its_first_stop_token():
    x = torch.full((1, 14), MASK)
    x[0, 0] = 11
    x[0, 13] = 12
    opts = SamplingOptions(temperature=0.0, alg="maskgit_plus")
    den = StopAt(stop_col=4)
    events, final = run_to_end(
        denoise(den, x, None, mask_id=MASK, options=opts, stop_ids=(STOP,), end_spans=[(0, 1, 13)])
    )
    # step 1 reveals the stop token at 4 and ends positions 5..12 with it; then 1..3 go one per step
    assert sorted(events[0].cols.tolist()) == [4, *range(5, 13)]
    assert events[0].confidence[events[0].cols > 4].eq(0).all()
    assert len(events) == 1 + 3 and den.forward_passes == 4
    assert all(not a[0, 5:].any() for a in den.asked[1:])  # never asked about the ended positions again
    assert all(c[0, 5:13].eq(MASK).all() for c in den.seen)  # which it still sees as masks, as before
    assert final[0, 1:4].eq(20).all() and final[0, 4:13].eq(STOP).all()
    # without the span (or without stop ids) every position is denoised
    events, final = run_to_end(denoise(StopAt(4), x, None, mask_id=MASK, options=opts, stop_ids=(STOP,)))
    assert len(events) == 12 and final[0, 5:13].eq(20).all()
    events, _ = run_to_end(denoise(StopAt(4), x, None, mask_id=MASK, options=opts, end_spans=[(0, 1, 13)]))
    assert len(events) == 12


def test_end_ids_choose_what_ends_a_span_without_touching_the_eos_penalty():
    """A single-line completion ends at a newline token too (``end_ids``); ``stop_ids`` keep their penalty role."""
    x = torch.full((1, 14), MASK)
    x[0, 0] = 11
    x[0, 13] = 12
    opts = SamplingOptions(temperature=0.0, alg="maskgit_plus")
    events, final = run_to_end(
        denoise(
            StopAt(4),
            x,
            None,
            mask_id=MASK,
            options=opts,
            stop_ids=(7,),
            end_spans=[(0, 1, 13)],
            end_ids=(STOP,),
        )
    )
    assert len(events) == 1 + 3 and final[0, 4:13].eq(STOP).all()
    # the same token is no end when end_ids leave it out
    events, _ = run_to_end(
        denoise(
            StopAt(4),
            x,
            None,
            mask_id=MASK,
            options=opts,
            stop_ids=(STOP,),
            end_spans=[(0, 1, 13)],
            end_ids=(7,),
        )
    )
    assert len(events) == 12


def test_only_the_end_spans_end_and_within_their_bounds():
    x = torch.full((1, 20), MASK)
    x[0, 0] = x[0, 9] = x[0, 10] = x[0, 19] = 11  # holes 1..8 and 11..18
    opts = SamplingOptions(temperature=0.0, alg="maskgit_plus", block_size=4)
    den = StopAt(stop_col=2)
    events, final = run_to_end(
        denoise(den, x, None, mask_id=MASK, options=opts, stop_ids=(STOP,), end_spans=[(0, 1, 9)])
    )
    seen = torch.zeros_like(x)
    for ev in events:
        seen[ev.rows, ev.cols] += 1
    assert torch.equal(seen, (x == MASK).long())  # each position once, the ended ones included
    assert final[0, 3:9].eq(STOP).all() and final[0, 11:19].eq(20).all() and final[0, 9:11].eq(11).all()
    assert den.forward_passes == 2 + 8  # hole 1: the stop token, then position 1; hole 2: 8 steps


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 20),
    pace=st.sampled_from([1, 3]),
    block=st.sampled_from([None, 4]),
    threshold=st.sampled_from([None, 0.5]),
)
def test_end_spans_reveal_every_position_once_and_never_ask_past_a_stop(n, pace, block, threshold):
    x = torch.full((2, n + 2), MASK)
    x[:, 0] = 11
    x[:, -1] = 12
    opts = SamplingOptions(temperature=0.0, tokens_per_step=pace, block_size=block, threshold=threshold)
    stops = (3, 4, 5, 6)  # a tenth of the vocabulary: random logits pick them now and then
    asked = []

    class Recording(RandomDenoiser):
        def __call__(self, x, valid, masked):
            asked.append((x.clone(), masked.clone()))
            return super().__call__(x, valid, masked)

    spans = [(0, 1, n + 1), (1, 1, n + 1)]
    events, final = run_to_end(
        denoise(Recording(), x, None, mask_id=MASK, options=opts, stop_ids=stops, end_spans=spans)
    )
    seen = torch.zeros_like(x)
    for ev in events:
        seen[ev.rows, ev.cols] += 1
    assert torch.equal(seen, (x == MASK).long()) and not (final == MASK).any()
    for canvas, masked in asked:
        for r in range(2):
            stop_at = [c for c in range(1, n + 1) if int(canvas[r, c]) in stops]
            if stop_at:
                assert not masked[r, stop_at[0] + 1 :].any()


def test_ending_early_keeps_the_pace_without_blocks():
    """48 masks at 3 a step is 16 steps; once the stop token at 4 ends the rest, the 3 before it take one more
    step at that pace, not one each spread over the 15 steps left."""
    x = torch.full((1, 50), MASK)
    x[0, 0] = 11
    x[0, 49] = 12
    opts = SamplingOptions(temperature=0.0, alg="maskgit_plus", tokens_per_step=3)
    events, _ = run_to_end(
        denoise(StopAt(4), x, None, mask_id=MASK, options=opts, stop_ids=(STOP,), end_spans=[(0, 1, 49)])
    )
    assert [len(ev.cols) for ev in events] == [3 + 44, 1]
