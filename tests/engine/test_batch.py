"""Batched infill (what the HTTP backend runs): a padded batch of requests gives each request exactly what it
gets alone, a row's result is ready the step it finishes, and a retired row stops costing forward-pass work."""

from __future__ import annotations

import pytest

from diffucoder_lsp.engine.batch import BatchRow, infill_batch, schedule_key
from diffucoder_lsp.engine.cache import CachedContextDenoiser
from diffucoder_lsp.engine.infill import infill, layout
from diffucoder_lsp.engine.options import SamplingOptions

TEXTS = [
    "def add(a, b):\n    return <|mask|>\n\nprint(add(1, 2))\n",
    "import os\n\ndef main():\n    path = <|mask|>\n    print(path)\n" * 2,
    "class A:\n    def f(self):\n        <|mask|>\n",
    "x = <|mask|> + <|mask|>\n",
]


@pytest.fixture(scope="module")
def lm():
    from diffucoder_lsp.model.loading import load_model

    return load_model("tiny", device="cpu", dtype="fp32")


def drain(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


@pytest.mark.parametrize(
    "options, lengths, cache",
    [
        (SamplingOptions(temperature=0.0, block_size=8), [6, 12, "auto", 5], True),
        (SamplingOptions(temperature=0.0, tokens_per_step=2), [6, 10, 4, 3], False),
    ],
)
def test_a_batch_gives_every_row_what_it_gets_alone(lm, options, lengths, cache):
    alone = [
        infill(lm, t, length=n, options=options, denoiser=CachedContextDenoiser(lm.model) if cache else None)
        for t, n in zip(TEXTS, lengths, strict=True)
    ]
    rows = [BatchRow(layout(lm, t, length=n, options=options)) for t, n in zip(TEXTS, lengths, strict=True)]
    steps, results = drain(
        infill_batch(lm, rows, options=options, denoiser=CachedContextDenoiser(lm.model) if cache else None)
    )
    for a, b in zip(alone, results, strict=True):
        assert b.text == a.text and b.steps == a.steps
        assert [h.token_ids for h in b.holes] == [h.token_ids for h in a.holes]
        assert [h.reveal_step for h in b.holes] == [h.reveal_step for h in a.holes]
    # each row's result arrives with the step that finished it, not with the batch's last step
    finished = {s.row: (i, s.result) for i, batch in enumerate(steps) for s in batch if s.result is not None}
    assert sorted(finished) == [0, 1, 2, 3]
    for row, (i, result) in finished.items():
        assert result is results[row] and i == results[row].steps - 1


def test_settled_rows_stop_as_they_do_alone(lm):
    """A row's settle tests end its hole as ``infill_stream(settle=...)`` does alone; rows without tests run on."""
    options = SamplingOptions(temperature=0.0, block_size=1)

    def after(n):
        return lambda written: len(lm.tokenizer.encode(written)) >= n

    tests = [(after(3),), None, (after(2),), None]
    lengths = [12, 10, 12, 4]
    alone = [
        infill(lm, t, length=n, options=options, end_early=False, settle=list(s) if s else None)
        for t, n, s in zip(TEXTS, lengths, tests, strict=True)
    ]
    rows = [
        BatchRow(layout(lm, t, length=n, options=options), False, s)
        for t, n, s in zip(TEXTS, lengths, tests, strict=True)
    ]
    _, results = drain(infill_batch(lm, rows, options=options))
    for a, b in zip(alone, results, strict=True):
        assert [h.token_ids for h in b.holes] == [h.token_ids for h in a.holes] and b.steps == a.steps
    assert results[0].steps < 12 and results[2].steps < 12  # the settled rows stopped early


def test_a_retired_row_leaves_the_batch_at_the_next_step(lm):
    options = SamplingOptions(temperature=0.0, block_size=32)
    rows = [BatchRow(layout(lm, t, length=12, options=options)) for t in TEXTS]
    denoiser = CachedContextDenoiser(lm.model)
    gen = infill_batch(lm, rows, options=options, denoiser=denoiser)
    first = next(gen)
    assert [s.row for s in first] == [0, 1, 2, 3]
    after = gen.send({1, 2})
    assert [s.row for s in after] == [0, 3]
    steps, results = drain(gen)
    assert results[1] is None and results[2] is None
    assert denoiser._rows.tolist() == [3]  # the cached tensors hold the rows still running only
    alone = infill(lm, TEXTS[0], length=12, options=options, denoiser=CachedContextDenoiser(lm.model))
    assert results[0].holes[0].token_ids == alone.holes[0].token_ids


def test_retiring_every_row_ends_the_run(lm):
    options = SamplingOptions(temperature=0.0)
    rows = [BatchRow(layout(lm, t, length=6, options=options)) for t in TEXTS[:2]]
    gen = infill_batch(lm, rows, options=options)
    next(gen)
    with pytest.raises(StopIteration) as stop:
        gen.send({0, 1})
    assert stop.value.value == [None, None]


def test_schedule_key_separates_rows_whose_schedule_depends_on_the_longest():
    from diffucoder_lsp.engine.infill import InfillCanvas

    canvas = InfillCanvas(
        ids=[1, 4, 4, 2],
        hole_spans=[(1, 3)],
        auto=[False],
        kept_prefix="",
        kept_suffix="",
        segments=["a", "b"],
    )
    assert schedule_key(SamplingOptions(block_size=32), canvas) is None
    assert schedule_key(SamplingOptions(tokens_per_step=2), canvas) is None
    assert schedule_key(SamplingOptions(exact=True), canvas) == 2
    assert schedule_key(SamplingOptions(exact=True, steps=4), canvas) is None
    assert schedule_key(SamplingOptions(block_size=8, steps=4), canvas) == 2
