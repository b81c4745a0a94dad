"""Tokenizer: a checkpoint's ``tokenizer.json`` through the ``tokenizers`` library, with DiffuCoder's special ids.

Real DiffuCoder checkpoints and our bundled model go through this same class. Special ids come from the model
config first (``mask_token_id``, ``eos_token_id``, ``pad_token_id``) and from the tokenizer's added tokens when the
config lacks them. The model's vocabulary (``vocab_size`` of the logits) is usually larger than the tokenizer's:
:attr:`CodeTokenizer.vocab_size` is the bound the sampler must never sample past.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .config import CheckpointError, ModelConfig
from .files import MAX_JSON_BYTES, read_bytes_capped

_SURROGATE = re.compile("[\ud800-\udfff]")

MASK = "<|mask|>"
EOS = "<|endoftext|>"
DLM_PAD = "<|dlm_pad|>"
# Named as in DiffuCoder so every model goes through the same code; order gives their ids in our own tokenizers.
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>", "<|beginoftext|>", MASK, DLM_PAD]

# Qwen2-style pre-tokenization: digits one by one, words with a leading space, runs of whitespace kept apart.
# Byte-level after the split, so any text (any whitespace, any unicode) round-trips exactly.
_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


class CodeTokenizer:
    """Text <-> ids, no special tokens added. Knows the mask, eos and pad ids."""

    def __init__(self, tok: Tokenizer, mask_id: int, eos_id: int, pad_id: int) -> None:
        self._tok = tok
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        added = tok.get_added_tokens_decoder() if hasattr(tok, "get_added_tokens_decoder") else {}
        self.special_ids = frozenset(int(i) for i, t in added.items() if getattr(t, "special", True))
        self.special_ids |= {mask_id, eos_id, pad_id}
        dlm = tok.token_to_id(DLM_PAD)
        self.dlm_pad_id = dlm
        self.im_end_id = tok.token_to_id("<|im_end|>")

    # Ids that end a span: anything after the first of these in a filled hole is padding.
    @property
    def stop_ids(self) -> frozenset[int]:
        ids = {self.eos_id, self.pad_id}
        if self.dlm_pad_id is not None:
            ids.add(self.dlm_pad_id)
        return frozenset(ids)

    @cached_property
    def newline_ids(self) -> frozenset[int]:
        """Every token whose text holds a line break (a completion kept to one line ends at the first)."""
        out = set()
        for i in range(self.vocab_size):
            if i in self.special_ids:
                continue
            if "\n" in self._tok.decode([i], skip_special_tokens=False):
                out.add(i)
        return frozenset(out)

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        if _SURROGATE.search(text):
            # a lone surrogate ('\ud800', a legal JSON escape in an editor's document) is not text the
            # tokenizer can take (TypeError): the model sees U+FFFD instead, one code point for one, so every
            # offset the caller computed still holds
            text = _SURROGATE.sub("\ufffd", text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id)) or ""

    @cached_property
    def token_texts(self) -> tuple[str, ...]:
        """Every id's text decoded on its own (index = id), computed once per tokenizer.

        Token healing compares a hole's required lead with the text of every token at every request; decoding
        a 152k vocabulary id by id takes ~100 ms, so it is done once, in one batch. Special tokens give their
        written form (``<|mask|>``); a byte-level token holding only part of a UTF-8 character decodes to
        U+FFFD where that part is, so its text is not the bytes it stands for.
        """
        ids = [[i] for i in range(self.vocab_size)]
        return tuple(self._tok.decode_batch(ids, skip_special_tokens=False))

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    @classmethod
    def from_dir(cls, folder: str | Path, config: ModelConfig) -> CodeTokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise CheckpointError(
                f"no tokenizer.json in {folder} (only the fast-tokenizer format is supported)"
            )
        data = read_bytes_capped(path, MAX_JSON_BYTES, "tokenizer.json")
        try:
            tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:  # tokenizers raises bare Exceptions for malformed files
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        return cls.from_tokenizer(tok, config)

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer, config: ModelConfig) -> CodeTokenizer:
        mask_id = config.mask_token_id
        named = tok.token_to_id(MASK)
        if named is not None and named != mask_id:
            # The config is what the model was trained with; a differing added token is a broken checkpoint.
            raise CheckpointError(
                f"config mask_token_id={mask_id} but the tokenizer has {MASK} at id {named}: inconsistent checkpoint"
            )
        return cls(tok, mask_id, config.eos_token_id, config.pad_token_id)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE with DiffuCoder's special-token names.

    The special tokens take ids 0..5 in SPECIAL_TOKENS order, so they are stable whatever the corpus."""
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
