"""Token caches, packed windows and infill-shaped examples for masked-diffusion pretraining.

Tokenizing a few hundred MB of Python takes minutes, so the corpus is tokenized once and cached next to it as a
flat token array (``{split}.tokens.npy``, uint16 when the vocabulary fits) with document start offsets
(``{split}.offsets.npy``, keyed by ``{split}.tokens.json``). Documents are separated by one eos token in the flat array, so a packed window that
crosses a file boundary sees ``<|endoftext|>`` there, as the real model does.

Two kinds of training rows, both of a fixed length ``L``:

- **packed**: ``L`` consecutive tokens of the flat array; every token is trainable.
- **infill**: ``prefix + span + K * eos + suffix`` from one file, with only ``span + K * eos`` trainable. The
  span is a line, a few lines, or a random token range. The ``K`` extra eos tokens sit *after* the true span and
  before the suffix: at inference ``--length auto`` opens a generous hole, the model fills the code first and eos
  after it, and the engine trims the trailing eos run. Shorter rows are right-padded and marked invalid.
  ``K`` follows what inference does (:func:`draw_pads`): half the rows have the hole an editor or ``fill``
  actually opens (:data:`INFERENCE_HOLES` tokens: the server's single-line hole, or ``auto``'s), so a 12-token
  line learns to end inside a 20- or 48-token hole; a quarter are exact (``K = 0``, the oracle length the
  evaluations give) and a quarter a little too long (``K`` up to the span's length). Rows whose pads were drawn
  only up to the span length taught the model that a hole is at most twice its content, so in the wide holes
  of real use it stopped early or rambled.

Every batch is a pure function of ``(seed, step, rank)``: resuming at step ``s`` reproduces exactly the batch an
uninterrupted run would have drawn, without storing a data cursor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model.tokenizer import CodeTokenizer
from .corpus import read_jsonl

log = logging.getLogger(__name__)

SPAN_KINDS = ("line", "lines", "range")
# the hole sizes inference opens: the server's single-line completion (Settings.max_tokens_single_line) and
# ``--length auto`` / multi-line completions (engine.infill.AUTO_LENGTH, Settings.max_tokens); a test keeps
# them equal to those defaults
INFERENCE_HOLES = (20, 48)


def draw_pads(span_len: int, rng: np.random.Generator) -> int:
    """How many eos pads follow a span of ``span_len`` tokens in a training row (see the module docstring).

    One draw of ``rng.random()`` picks the case, so the number of random draws does not depend on the span.
    """
    u = float(rng.random())
    extra = int(rng.integers(0, span_len + 1))
    if u < 0.25:
        return 0
    if u < 0.5:
        return extra
    for size in INFERENCE_HOLES:  # the smallest hole inference would open for this much code
        if size >= span_len:
            return size - span_len
    return extra  # longer than any inference hole: as in the too-long case


@dataclass
class TokenCache:
    """A split's tokens: ``tokens`` is docs joined by eos, ``offsets[i]`` the start of doc i (plus the end)."""

    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        """Doc ``i`` without its trailing eos separator."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1] - 1]


def tokenize_split(
    corpus_dir: str | Path,
    split: str,
    tok: CodeTokenizer,
    batch_docs: int = 256,
    limit_docs: int | None = None,
) -> TokenCache:
    """Tokenize ``{split}.jsonl`` (cached: reuse the .npy files when they are newer than the jsonl)."""
    corpus_dir = Path(corpus_dir)
    src = corpus_dir / f"{split}.jsonl"
    tok_path, off_path = corpus_dir / f"{split}.tokens.npy", corpus_dir / f"{split}.offsets.npy"
    meta_path = corpus_dir / f"{split}.tokens.json"
    # The cache is keyed by the tokenizer's content and the split's size/mtime: a retrained tokenizer or a
    # rebuilt corpus never reuses stale ids.
    key = {
        "tokenizer": hashlib.sha256(tok._tok.to_str().encode("utf-8")).hexdigest(),
        "source_size": src.stat().st_size,
        "source_mtime": src.stat().st_mtime,
        "limit_docs": limit_docs,
    }
    if tok_path.is_file() and off_path.is_file() and meta_path.is_file():
        if json.loads(meta_path.read_text(encoding="utf-8")) == key:
            return TokenCache(np.load(tok_path, mmap_mode="r"), np.load(off_path))
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.int32
    chunks: list[np.ndarray] = []
    lengths: list[int] = []
    texts: list[str] = []

    def flush() -> None:
        for enc in tok._tok.encode_batch(texts, add_special_tokens=False):
            ids = enc.ids + [tok.eos_id]
            chunks.append(np.asarray(ids, dtype=dtype))
            lengths.append(len(ids))
        texts.clear()

    for n, row in enumerate(read_jsonl(src)):
        if limit_docs is not None and n >= limit_docs:
            break
        texts.append(row["text"])
        if len(texts) >= batch_docs:
            flush()
    if texts:
        flush()
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for path, arr in ((tok_path, tokens), (off_path, offsets)):
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        tmp.replace(path)
    meta_path.write_text(json.dumps(key), encoding="utf-8")
    log.info("tokenized %s: %d docs, %d tokens", split, len(lengths), len(tokens))
    return TokenCache(tokens, offsets)


def line_end_table(tok: CodeTokenizer) -> np.ndarray:
    """``table[id]`` is True when token ``id`` contains a newline: a line ends inside or at the end of it."""
    table = np.zeros(tok.vocab_size, dtype=bool)
    for i in range(tok.vocab_size):
        if i in tok.special_ids:
            continue
        if "\n" in tok.decode([i], skip_special=False):
            table[i] = True
    return table


@dataclass
class InfillExample:
    """One infill row before padding: ``ids`` is prefix + span + pads + suffix; trainable is [start, end)."""

    ids: np.ndarray
    start: int  # first span token
    span_len: int  # true span tokens
    pads: int  # eos tokens after the span

    @property
    def end(self) -> int:
        return self.start + self.span_len + self.pads


def choose_span(
    doc: np.ndarray, line_end: np.ndarray, rng: np.random.Generator, max_span: int
) -> tuple[int, int]:
    """A span [a, b) of ``doc``: one line, 2-8 lines, or a random token range, never longer than ``max_span``.

    Line spans start right after a newline-bearing token and end right after one, so they cover whole lines as
    an editor's line-level hole does (with a byte-level BPE a token may carry the newline and the next indent).
    """
    n = len(doc)
    kind = SPAN_KINDS[int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
    if kind != "range":
        ends = np.flatnonzero(line_end[doc]) + 1  # positions right after a newline token
        starts = np.concatenate([[0], ends[ends < n]])
        if len(starts) >= 2:
            nlines = 1 if kind == "line" else int(rng.integers(2, 9))
            i = int(rng.integers(0, len(starts) - 1))
            j = min(i + nlines, len(starts) - 1)
            a, b = int(starts[i]), int(starts[j])
            if 0 < b - a <= max_span:
                return a, b
    length = int(rng.integers(1, max(2, min(max_span, 64) + 1)))
    length = min(length, n)
    a = int(rng.integers(0, n - length + 1))
    return a, a + length


def make_infill(
    doc: np.ndarray,
    seq_len: int,
    eos_id: int,
    line_end: np.ndarray,
    rng: np.random.Generator,
    span: tuple[int, int] | None = None,
    pads: int | None = None,
) -> InfillExample:
    """Cut ``doc`` into prefix / span / suffix around a span and add ``pads`` eos tokens after the span.

    ``pads`` defaults to :func:`draw_pads`: exact holes, slightly long ones, and the holes inference opens.
    The context budget left after the hole goes mostly to the prefix (50-90 %), the rest to the suffix; whatever
    one side cannot use goes to the other.
    """
    max_span = max(1, seq_len // 4)
    a, b = span if span is not None else choose_span(doc, line_end, rng, max_span)
    b = min(b, a + max_span)
    span_len = b - a
    if pads is None:
        pads = draw_pads(span_len, rng)
    pads = max(0, min(pads, seq_len - span_len - 1))
    budget = seq_len - span_len - pads
    pre_avail, suf_avail = a, len(doc) - b
    pre_target = int(budget * rng.uniform(0.5, 0.9))
    pre = min(pre_avail, max(pre_target, budget - suf_avail))
    suf = min(suf_avail, budget - pre)
    ids = np.concatenate(
        [doc[a - pre : a], doc[a:b], np.full(pads, eos_id, dtype=doc.dtype), doc[b : b + suf]]
    ).astype(np.int64)
    return InfillExample(ids=ids, start=pre, span_len=span_len, pads=pads)


@dataclass
class Batch:
    input_ids: np.ndarray  # (B, L) int64
    trainable: np.ndarray  # (B, L) bool: positions that may be masked and scored
    valid: np.ndarray  # (B, L) bool: False for right padding
    is_infill: np.ndarray  # (B,) bool

    @property
    def num_tokens(self) -> int:
        return int(self.valid.sum())


class BatchSampler:
    """Draws batches of packed windows and infill rows as a pure function of ``(seed, step, rank)``."""

    def __init__(
        self,
        cache: TokenCache,
        seq_len: int,
        eos_id: int,
        line_end: np.ndarray,
        infill_fraction: float = 0.5,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        if len(cache.tokens) <= seq_len:
            raise ValueError(f"corpus split has {len(cache.tokens)} tokens, fewer than seq_len {seq_len}")
        self.cache = cache
        self.seq_len = seq_len
        self.eos_id = eos_id
        self.line_end = line_end
        self.infill_fraction = infill_fraction
        self.seed = seed
        self.rank = rank
        self._doc_lens = np.diff(cache.offsets) - 1

    def rng_for(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step, self.rank])

    def _doc_at(self, pos: int) -> int:
        return int(np.searchsorted(self.cache.offsets, pos, side="right") - 1)

    def batch(self, step: int, batch_size: int) -> Batch:
        rng = self.rng_for(step)
        L = self.seq_len
        ids = np.full((batch_size, L), self.eos_id, dtype=np.int64)
        trainable = np.zeros((batch_size, L), dtype=bool)
        valid = np.zeros((batch_size, L), dtype=bool)
        infill = rng.random(batch_size) < self.infill_fraction
        n_total = len(self.cache.tokens)
        for r in range(batch_size):
            if infill[r]:
                # Length-weighted doc choice (a random token's doc); skip near-empty docs.
                for _ in range(8):
                    d = self._doc_at(int(rng.integers(0, n_total)))
                    if self._doc_lens[d] >= 8:
                        break
                ex = make_infill(np.asarray(self.cache.doc(d)), L, self.eos_id, self.line_end, rng)
                n = len(ex.ids)
                ids[r, :n] = ex.ids
                valid[r, :n] = True
                trainable[r, ex.start : ex.end] = True
            else:
                s = int(rng.integers(0, n_total - L + 1))
                ids[r] = self.cache.tokens[s : s + L]
                valid[r] = True
                trainable[r] = True
        return Batch(ids, trainable, valid, infill)
