"""Context reuse in a batch (what the HTTP backend runs for editors that type): every row starts from its own
stream's store, gets what it would get alone with that store, and leaves its canvas there for the next request."""

from __future__ import annotations

import pytest
import torch

from diffucoder_lsp.engine.batch import BatchRow, infill_batch
from diffucoder_lsp.engine.cache import CachedContextDenoiser
from diffucoder_lsp.engine.infill import infill, layout
from diffucoder_lsp.engine.options import SamplingOptions
from diffucoder_lsp.engine.reuse import OVERWRITTEN, ContextStore

M = "<|mask|>"
BODY = "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fib"
# three documents an editor types in: each request adds a few characters before the hole
DOCS = [
    ("import os\n\n" + BODY, "\n\n\ndef main():\n    return fibonacci(10)\n"),
    (
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y",
        "\n\n    def norm(self):\n        return 0\n",
    ),
    (
        "def add(a, b):\n    '''Sum of two numbers.'''\n    total = a",
        "\n    return total\n\nprint(add(1, 2))\n",
    ),
]
HEADER = '"""Small helpers."""\n\nimport math\nimport os\nimport sys\n\n\n'
DOCS = [(HEADER + p, s + "\n\nif __name__ == '__main__':\n    main()\n") for p, s in DOCS]
TYPED = ["onacci(", " = ", " +"]
OPTIONS = SamplingOptions(temperature=0.0, block_size=1)


@pytest.fixture(scope="module")
def lm():
    from diffucoder_lsp.model.loading import load_model

    return load_model("tiny", device="cpu", dtype="fp32")


def drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def alone(lm, text: str, store: ContextStore | None):
    den = CachedContextDenoiser(lm.model, store=store, draft_tokens=0)
    return infill(lm, text, length=5, options=OPTIONS, denoiser=den), den


def batch(lm, texts: list[str], stores: list):
    rows = [BatchRow(layout(lm, t, length=5, options=OPTIONS)) for t in texts]
    den = CachedContextDenoiser(lm.model, stores=stores, draft_tokens=0)
    return drain(infill_batch(lm, rows, options=OPTIONS, denoiser=den)), den


def test_rows_start_from_their_own_stores_and_match_running_alone(lm):
    first = [p + M + s for p, s in DOCS]
    typed = [p + t + M + s for (p, s), t in zip(DOCS, TYPED, strict=True)]
    mine = [ContextStore(min_tokens=0) for _ in DOCS]
    theirs = [ContextStore(min_tokens=0) for _ in DOCS]
    for text, a, b in zip(first, mine, theirs, strict=True):  # each stream's previous request
        alone(lm, text, a)
        alone(lm, text, b)
    # the third row's store holds another document: a miss, so the batch mixes a reused part and a full one
    theirs[2].clear()
    alone(lm, first[0], theirs[2])
    mine[2].clear()
    alone(lm, first[0], mine[2])

    got, den = batch(lm, typed, mine)
    want = [alone(lm, t, s)[0] for t, s in zip(typed, theirs, strict=True)]
    for g, w in zip(got, want, strict=True):
        assert [h.token_ids for h in g.holes] == [h.token_ids for h in w.holes]
    assert den.full_passes == 1 and den.reused_tokens > 40  # rows 0 and 1 reused, row 2 needed a pass
    assert [s.entry.chain for s in mine] == [1, 1, 0]
    # every store now holds its row's canvas as the lone request left its own, except that a lone request's
    # steps overwrite some stored positions in place (marked, never reused), where the batch stored a copy
    for a, b in zip(mine, theirs, strict=True):
        kept = [i for i, t in enumerate(b.entry.tokens) if t != OVERWRITTEN]
        assert 0 < len(b.entry.tokens) - len(kept) <= 6  # the hole and its predecessor
        assert [a.entry.tokens[i] for i in kept] == [b.entry.tokens[i] for i in kept]
        assert OVERWRITTEN not in a.entry.tokens
        for (ka, va), (kb, vb) in zip(a.entry.kvs, b.entry.kvs, strict=True):
            assert ka.shape == kb.shape
            assert torch.allclose(ka[:, :, kept], kb[:, :, kept], atol=1e-4)
            assert torch.allclose(va[:, :, kept], vb[:, :, kept], atol=1e-4)


def test_a_second_keystroke_reuses_what_the_batch_left(lm):
    """The batch's steps write into its own cache, not into the stores: the next round reuses clean entries."""
    mine = [ContextStore(min_tokens=0) for _ in DOCS]
    theirs = [ContextStore(min_tokens=0) for _ in DOCS]
    batch(lm, [p + M + s for p, s in DOCS], mine)
    for (p, s), store in zip(DOCS, theirs, strict=True):
        alone(lm, p + M + s, store)
    typed = [p + t + M + s for (p, s), t in zip(DOCS, TYPED, strict=True)]
    got, den = batch(lm, typed, mine)
    assert den.full_passes == 0 and den.forward_passes >= 1
    want = [alone(lm, t, s)[0] for t, s in zip(typed, theirs, strict=True)]
    for g, w in zip(got, want, strict=True):
        assert [h.token_ids for h in g.holes] == [h.token_ids for h in w.holes]


def test_rows_without_a_store_and_a_batch_of_one(lm):
    texts = [p + M + s for p, s in DOCS]
    store = ContextStore(min_tokens=0)
    got, den = batch(lm, texts[:2], [None, store])
    want = [alone(lm, t, None)[0] for t in texts[:2]]
    assert [h.token_ids for r in got for h in r.holes] == [h.token_ids for r in want for h in r.holes]
    assert store.entry is not None and store.entry.chain == 0
    # one row: the one-row path, with its store
    (one,), den = batch(lm, [DOCS[1][0] + " =" + M + DOCS[1][1]], [store])
    assert den.full_passes == 0 and den.reused_tokens > 20 and store.entry.chain == 1
    assert one.holes[0].token_ids
