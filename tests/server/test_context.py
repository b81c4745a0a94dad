"""Context around the cursor: token budget, whole lines, prefix/suffix shares, special tokens defused."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from diffucoder_lsp.server.context import build_context, defuse_special_tokens


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word plus one per line break."""
    return len(text.split()) + text.count("\n")


def numbered(n: int, tag: str) -> str:
    return "".join(f"{tag}{i} = {i}\n" for i in range(n))


def test_everything_fits():
    ctx = build_context("a = 1\nb = ", "2\nc = 3\n", budget=100, count=words)
    assert (ctx.prefix, ctx.suffix) == ("a = 1\nb = ", "2\nc = 3\n")
    assert not ctx.prefix_cut and not ctx.suffix_cut


def test_cut_at_line_boundaries_nearest_the_cursor():
    prefix = numbered(50, "p") + "cur = "
    suffix = "x\n" + numbered(50, "s")
    ctx = build_context(prefix, suffix, budget=40, count=words, prefix_share=0.5)
    assert ctx.prefix.endswith("p49 = 49\ncur = ") and ctx.prefix.startswith("p")
    assert ctx.suffix.startswith("x\ns0 = 0\n") and ctx.suffix.endswith("\n")
    assert ctx.prefix_cut and ctx.suffix_cut
    assert words(ctx.prefix) + words(ctx.suffix) <= 40
    assert abs(words(ctx.prefix) - words(ctx.suffix)) <= 6  # about half each


def test_unused_share_goes_to_the_other_side():
    prefix = numbered(100, "p")
    ctx = build_context(prefix, "\n", budget=60, count=words, prefix_share=0.3)
    assert words(ctx.prefix) > 50  # the suffix had nothing: the prefix took its share
    ctx = build_context("", numbered(100, "s"), budget=60, count=words, prefix_share=0.9)
    assert words(ctx.suffix) > 50


def test_a_huge_single_line_is_cut_by_characters():
    line = "x" * 100_000
    ctx = build_context(line, line, budget=10, count=lambda s: len(s) // 4)
    assert 0 < len(ctx.prefix) <= 80 and 0 < len(ctx.suffix) <= 80
    assert ctx.prefix_cut and ctx.suffix_cut


def test_special_tokens_in_the_document_are_defused():
    assert defuse_special_tokens("a <|mask|> b <|endoftext|>") == "a <\u200b|mask|> b <\u200b|endoftext|>"
    ctx = build_context("x = '<|mask|>'\ny = ", "\n", budget=100, count=words)
    assert "<|mask|>" not in ctx.prefix


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["a = 1", "bb", "", "  c d e", "f(g)"]), max_size=30),
    st.lists(st.sampled_from(["x", "", "y = 2 3", "  z"]), max_size=30),
    st.integers(4, 60),
    st.floats(0.0, 1.0),
)
def test_context_is_a_window_of_the_document(pre, suf, budget, share):
    prefix = "\n".join(pre) + ("\n" if pre else "") + "cur"
    suffix = "sor\n" + "\n".join(suf)
    ctx = build_context(prefix, suffix, budget=budget, count=words, prefix_share=share)
    assert prefix.endswith(ctx.prefix) and suffix.startswith(ctx.suffix)
    assert ctx.prefix.endswith("cur") and ctx.suffix.startswith("sor")
    assert ctx.prefix == prefix or prefix[len(prefix) - len(ctx.prefix) - 1] == "\n"  # whole lines
    assert words(ctx.prefix) + words(ctx.suffix) <= max(budget, words("cur") + words("sor\n"))
