"""Infill-shaped examples (pads after the span, loss region, intact context) and packed/infill batches."""

from __future__ import annotations

import numpy as np
import pytest

from diffucoder_lsp.model.tokenizer import EOS, MASK, CodeTokenizer, train_bpe
from diffucoder_lsp.train.data import (
    INFERENCE_HOLES,
    BatchSampler,
    TokenCache,
    draw_pads,
    line_end_table,
    make_infill,
    tokenize_split,
)

EOS_ID = 0
NL = 9  # in the synthetic vocabulary below, token 9 ends a line


def _line_end(vocab: int = 20) -> np.ndarray:
    table = np.zeros(vocab, dtype=bool)
    table[NL] = True
    return table


def _doc(n: int = 60) -> np.ndarray:
    rng = np.random.default_rng(1)
    ids = rng.integers(10, 20, size=n)
    ids[5::6] = NL  # a line every 6 tokens
    return ids.astype(np.uint16)


def test_infill_places_pads_after_span_and_keeps_context():
    doc = _doc()
    ex = make_infill(doc, 40, EOS_ID, _line_end(), np.random.default_rng(0), span=(24, 30), pads=3)
    ids = ex.ids
    assert ex.span_len == 6 and ex.pads == 3
    assert len(ids) == 40
    span = ids[ex.start : ex.start + 6]
    np.testing.assert_array_equal(span, doc[24:30])
    np.testing.assert_array_equal(ids[ex.start + 6 : ex.end], [EOS_ID] * 3)  # pads right after the true span
    # Prefix and suffix are contiguous real text immediately before/after the span.
    prefix, suffix = ids[: ex.start], ids[ex.end :]
    np.testing.assert_array_equal(prefix, doc[24 - len(prefix) : 24])
    np.testing.assert_array_equal(suffix, doc[30 : 30 + len(suffix)])
    assert len(prefix) + len(suffix) == 40 - 9


def test_infill_near_document_edges_uses_the_other_side():
    doc = _doc(30)
    ex = make_infill(doc, 64, EOS_ID, _line_end(), np.random.default_rng(0), span=(0, 6), pads=2)
    assert ex.start == 0  # nothing before the span
    np.testing.assert_array_equal(ex.ids[ex.end :], doc[6:])  # whole suffix fits
    assert len(ex.ids) == 30 + 2  # shorter than the window: padded later, never invented


@pytest.mark.parametrize("seed", range(20))
def test_random_spans_are_well_formed(seed):
    doc = _doc(200)
    rng = np.random.default_rng(seed)
    ex = make_infill(doc, 64, EOS_ID, _line_end(), rng)
    assert 1 <= ex.span_len <= 16  # at most a quarter of the window
    assert ex.pads in (0, *(h - ex.span_len for h in INFERENCE_HOLES)) or 0 <= ex.pads <= ex.span_len
    assert len(ex.ids) <= 64
    body = ex.ids[ex.start : ex.start + ex.span_len]
    # The span is real text from the doc: find it at its position right after the prefix.
    joined = np.concatenate([ex.ids[: ex.start], body, ex.ids[ex.end :]])
    assert any(np.array_equal(joined, doc[a : a + len(joined)]) for a in range(len(doc) - len(joined) + 1))
    assert (ex.ids[ex.start + ex.span_len : ex.end] == EOS_ID).all()


def test_line_spans_start_and_end_at_line_boundaries():
    doc = _doc(300)
    seen_line_span = False
    for seed in range(40):
        ex = make_infill(doc, 128, EOS_ID, _line_end(), np.random.default_rng(seed))
        body = ex.ids[ex.start : ex.start + ex.span_len]
        if ex.span_len % 6 == 0 and body[-1] == NL and (ex.start == 0 or ex.ids[ex.start - 1] == NL):
            seen_line_span = True
    assert seen_line_span


def _cache(n_docs: int = 12) -> TokenCache:
    docs = [np.append(_doc(50 + 7 * i), EOS_ID) for i in range(n_docs)]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    return TokenCache(np.concatenate(docs).astype(np.uint16), offsets)


def test_batches_are_a_function_of_seed_and_step():
    s1 = BatchSampler(_cache(), 48, EOS_ID, _line_end(), infill_fraction=0.5, seed=3)
    s2 = BatchSampler(_cache(), 48, EOS_ID, _line_end(), infill_fraction=0.5, seed=3)
    a, b = s1.batch(7, 8), s2.batch(7, 8)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    np.testing.assert_array_equal(a.trainable, b.trainable)
    assert not np.array_equal(s1.batch(8, 8).input_ids, a.input_ids)
    other_rank = BatchSampler(_cache(), 48, EOS_ID, _line_end(), infill_fraction=0.5, seed=3, rank=1)
    assert not np.array_equal(other_rank.batch(7, 8).input_ids, a.input_ids)


def test_batch_masks_packed_vs_infill_rows():
    sampler = BatchSampler(_cache(), 48, EOS_ID, _line_end(), infill_fraction=0.5, seed=0)
    batch = sampler.batch(0, 32)
    assert batch.input_ids.shape == (32, 48) and batch.input_ids.dtype == np.int64
    assert 0 < batch.is_infill.sum() < 32
    for r in range(32):
        if batch.is_infill[r]:
            region = np.flatnonzero(batch.trainable[r])
            assert len(region) >= 1 and np.all(np.diff(region) == 1)  # one contiguous span + pads
            assert batch.trainable[r].sum() < batch.valid[r].sum()  # context is never trained on
            assert not (batch.trainable[r] & ~batch.valid[r]).any()
            # padding only at the right end
            v = batch.valid[r]
            assert v[: v.sum()].all()
        else:
            assert batch.trainable[r].all() and batch.valid[r].all()


def test_tokenize_split_caches_and_separates_docs_with_eos(tmp_path):
    import json

    texts = ["def a():\n    return 1\n", "x = 2\n", "class B:\n    pass\n"]
    with (tmp_path / "train.jsonl").open("w") as f:
        for t in texts:
            f.write(json.dumps({"path": "p.py", "sha": "0" * 64, "text": t}) + "\n")
    raw = train_bpe(texts * 5, vocab_size=300, min_frequency=1)
    tok = CodeTokenizer(raw, raw.token_to_id(MASK), raw.token_to_id(EOS), raw.token_to_id(EOS))
    cache = tokenize_split(tmp_path, "train", tok)
    assert cache.num_docs == 3 and cache.tokens.dtype == np.uint16
    for i, t in enumerate(texts):
        assert tok.decode(cache.doc(i)) == t
        assert cache.tokens[cache.offsets[i + 1] - 1] == tok.eos_id
    assert (tmp_path / "train.tokens.npy").is_file()
    again = tokenize_split(tmp_path, "train", tok)  # from the cache
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(cache.tokens))
    table = line_end_table(tok)
    assert table[tok.encode("\n")[0]] and not table[tok.encode("x")[0]] and not table[tok.eos_id]


def test_token_cache_is_rebuilt_for_another_tokenizer(tmp_path):
    import json

    texts = ["def a():\n    return 1\n", "value = compute(1, 2)\n"]
    with (tmp_path / "valid.jsonl").open("w") as f:
        for t in texts:
            f.write(json.dumps({"path": "p.py", "sha": "0" * 64, "text": t}) + "\n")
    small = train_bpe(texts, vocab_size=270, min_frequency=1)
    big = train_bpe(texts * 5, vocab_size=330, min_frequency=1)
    toks = [
        CodeTokenizer(r, r.token_to_id(MASK), r.token_to_id(EOS), r.token_to_id(EOS)) for r in (small, big)
    ]
    first = np.asarray(tokenize_split(tmp_path, "valid", toks[0]).tokens).copy()
    second = tokenize_split(tmp_path, "valid", toks[1])
    assert len(second.tokens) < len(first)  # the larger vocabulary's ids, not the cached ones
    assert toks[1].decode(second.doc(1)) == texts[1]


def test_pads_follow_the_holes_inference_opens():
    """A quarter exact, a quarter a little long, half the hole the server / ``--length auto`` would open: a
    12-token line gets 8 pads (a 20-token single-line hole) and a 30-token span 18 (the 48-token auto hole)."""
    rng = np.random.default_rng(0)
    short = [draw_pads(12, rng) for _ in range(4000)]
    assert 0.2 < short.count(0) / 4000 < 0.35  # exact, plus the uniform case's zeros
    assert 0.45 < short.count(20 - 12) / 4000 < 0.6
    assert max(short) == 12 or max(short) == 20 - 12
    mid = [draw_pads(30, rng) for _ in range(4000)]
    assert 0.45 < mid.count(48 - 30) / 4000 < 0.6
    long = [draw_pads(60, rng) for _ in range(2000)]  # longer than any inference hole: never past the span
    assert max(long) <= 60 and min(long) == 0


def test_inference_holes_match_the_engine_and_server_defaults():
    from diffucoder_lsp.engine.infill import AUTO_LENGTH
    from diffucoder_lsp.server.settings import Settings

    assert INFERENCE_HOLES == (Settings().max_tokens_single_line, Settings().max_tokens)
    assert AUTO_LENGTH in INFERENCE_HOLES
