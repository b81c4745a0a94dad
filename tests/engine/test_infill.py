"""The infill API on a tiny real checkpoint: joint holes, unicode, holes at the edges, context budget."""

from __future__ import annotations

import pytest
import torch

from diffucoder_lsp.engine.denoiser import FullCanvasDenoiser
from diffucoder_lsp.engine.infill import InfillCanvas, infill, infill_stream, prepare_infill, split_holes
from diffucoder_lsp.engine.sampler import SamplingOptions, denoise, run_to_end
from diffucoder_lsp.errors import BadInputError

M = "<|mask|>"
GREEDY = SamplingOptions(temperature=0.0)


def test_several_holes_filled_jointly(lm):
    text = f"def add(a, b):\n    return {M}\n\n\ndef sub(a, b):\n    return {M}\n"
    res = infill(lm, text, length=6, options=GREEDY)
    assert len(res.holes) == 2
    assert all(len(h.token_ids) == 6 and len(h.reveal_step) == 6 for h in res.holes)
    # one run: reveal steps of both holes interleave in one schedule of 12 steps
    steps = sorted(s for h in res.holes for s in h.reveal_step)
    assert steps == list(range(12)) and res.steps == 12 and res.forward_passes == 12
    expected = text.replace(M, res.holes[0].text, 1).replace(M, res.holes[1].text, 1)
    assert res.text == expected
    assert M not in res.text


def test_unicode_and_holes_at_edges(lm):
    text = f"{M}# café ☕ 日本語 😀\nx = '{M}'\n{M}"
    res = infill(lm, text, length=4, options=GREEDY)
    assert len(res.holes) == 3
    assert res.text.startswith(res.holes[0].text)
    assert res.text.endswith(res.holes[2].text)
    assert "# café ☕ 日本語 😀\nx = '" in res.text


def test_a_lone_surrogate_in_the_context_is_no_error(lm):
    """'\\ud800' is a legal JSON escape an editor may send; the model reads U+FFFD and the text keeps it."""
    text = "s = '\ud800'\nx = <|mask|>\nt = '\udfff'\n"
    result = infill(lm, text, length=4, options=SamplingOptions(steps=2, temperature=0.0))
    assert result.text.startswith("s = '\ud800'\nx = ") and result.text.endswith("\nt = '\udfff'\n")
    assert lm.tokenizer.encode("'\ud800'") == lm.tokenizer.encode("'\ufffd'")


def test_auto_length_trims_trailing_stop_tokens(lm):
    tok = lm.tokenizer
    canvas = prepare_infill(tok, f"a = 1\n{M}\nb = 2\n", length="auto", auto_length=10)
    ((a, b),) = canvas.hole_spans
    assert b - a == 10

    # Force the model to write one token then eos for the rest: the result must keep just that token.
    keep = tok.encode("x")[0]

    class Scripted:
        forward_passes = 0

        def __call__(self, x, valid, masked):
            cols = masked.nonzero(as_tuple=True)[1]
            logits = torch.zeros(len(cols), lm.config.vocab_size)
            for i, c in enumerate(cols.tolist()):
                logits[i, keep if c == a else tok.eos_id] = 10.0
            return logits

    # the script writes "x" at the hole's first position: no lead there (healing: test_healing.py)
    res = infill(lm, f"a = 1\n{M}\nb = 2\n", length="auto", options=GREEDY, denoiser=Scripted(), heal=False)
    assert res.holes[0].token_ids == [keep]
    assert res.text == "a = 1\nx\nb = 2\n"


def test_auto_holes_end_early_fixed_and_exact_ones_do_not(lm):
    """The model writes "x" then eos: an auto hole stops denoising once an eos is revealed (what follows is
    cut), with the same result; a fixed-length hole, end_early=False and the reference decoder go to the end."""
    tok = lm.tokenizer
    keep = tok.encode("x")[0]
    text = f"a = 1\n{M}\nb = 2\n"
    canvas = prepare_infill(tok, text, length=12)
    ((a, b),) = canvas.hole_spans

    class Scripted:
        def __init__(self):
            self.forward_passes = 0

        def __call__(self, x, valid, masked):
            self.forward_passes += 1
            cols = masked.nonzero(as_tuple=True)[1]
            logits = torch.zeros(len(cols), lm.config.vocab_size)
            for i, c in enumerate(cols.tolist()):
                logits[i, keep if c == a else tok.eos_id] = 10.0 - (c - a) * 0.1  # the earliest are surest
            return logits

    def run(length, **kw):
        den = Scripted()
        opts = kw.pop("options", GREEDY)
        # the script writes "x" at the hole's first position: no lead there (healing: test_healing.py)
        res = infill(lm, text, length=length, options=opts, denoiser=den, heal=False, **kw)
        return res, den.forward_passes

    res, passes = run(12)  # fixed length: the default leaves it alone
    assert passes == 12 and res.holes[0].token_ids[0] == keep
    res, passes = run(12, end_early=True)  # step 1: "x", step 2: the first eos ends the other 10
    assert passes == 2 and res.holes[0].token_ids == [keep] + [tok.eos_id] * 11
    res, passes = run("auto")
    assert passes == 2 and res.holes[0].token_ids == [keep] and res.text == "a = 1\nx\nb = 2\n"
    assert run("auto", end_early=False)[1] == 48
    exact = SamplingOptions(steps=48, exact=True, temperature=0.0)
    assert run("auto", options=exact)[1] == 48


def test_context_cut_respects_budget_and_keeps_text(lm):
    tok = lm.tokenizer
    before = "".join(f"line_{i} = {i}\n" for i in range(200))
    after = "".join(f"tail_{i} = {i}\n" for i in range(200))
    text = before + M + "\n" + after
    window = 120
    canvas = prepare_infill(tok, text, length=8, context_window=window)
    assert len(canvas.ids) <= window
    # cut at line boundaries, nearest lines kept
    assert canvas.kept_prefix.endswith("\n") and canvas.segments[0].startswith("line_")
    assert canvas.segments[0].endswith("line_199 = 199\n")
    assert canvas.segments[-1].startswith("\ntail_0 = 0\n")
    assert canvas.kept_prefix + canvas.segments[0] == before
    assert canvas.segments[-1] + canvas.kept_suffix == "\n" + after
    # the prefix gets most of the budget, the suffix some
    pre = len(tok.encode(canvas.segments[0]))
    suf = len(tok.encode(canvas.segments[-1]))
    assert pre > suf > 0
    res = infill(lm, text, length=8, options=GREEDY, max_context_tokens=window)
    assert res.text.startswith(before) and res.text.endswith("\n" + after)


def test_short_suffix_gives_its_budget_to_the_prefix(lm):
    before = "".join(f"v{i} = {i}\n" for i in range(300))
    canvas = prepare_infill(lm.tokenizer, before + M, length=4, context_window=100)
    assert 90 <= len(canvas.ids) <= 100


def test_bad_input(lm):
    with pytest.raises(BadInputError, match="no holes"):
        infill(lm, "x = 1\n")
    with pytest.raises(BadInputError):
        infill(lm, f"{M}", length=0)
    with pytest.raises(BadInputError, match="context window"):
        prepare_infill(lm.tokenizer, f"{M}{M}", length=600, context_window=1000)
    with pytest.raises(BadInputError):
        split_holes("abc", marker="")


def test_custom_marker(lm):
    res = infill(lm, "x = ??\n", marker="??", length=3, options=GREEDY)
    assert len(res.holes) == 1 and "??" not in res.text


def test_stream_yields_events_and_can_be_cancelled(lm):
    gen = infill_stream(lm, f"a = {M}\n", length=8, options=GREEDY)
    canvas, first = next(gen)
    assert isinstance(canvas, InfillCanvas) and first.step == 0 and len(first.cols) == 1
    gen.close()  # cancelled between steps: no error, no further model calls


def test_padded_batch_equals_rows_alone(lm):
    """The sampler on a right-padded batch gives what each row gives alone (greedy, fp32)."""
    tok = lm.tokenizer
    rows = [
        tok.encode("def f(x):\n    return ") + [tok.mask_id] * 5 + tok.encode("\n\nprint(f(2))\n"),
        tok.encode("import os\n") + [tok.mask_id] * 3 + tok.encode("\n"),
    ]
    width = max(map(len, rows))
    x = torch.full((2, width), tok.pad_id)
    valid = torch.zeros(2, width, dtype=torch.bool)
    for r, ids in enumerate(rows):
        x[r, : len(ids)] = torch.tensor(ids)
        valid[r, : len(ids)] = True
    opts = SamplingOptions(temperature=0.0, steps=5)
    kw = dict(mask_id=tok.mask_id, options=opts, allowed_vocab=tok.vocab_size)
    _, batch = run_to_end(denoise(FullCanvasDenoiser(lm.model), x, valid, **kw))
    for r, ids in enumerate(rows):
        _, alone = run_to_end(denoise(FullCanvasDenoiser(lm.model), torch.tensor([ids]), None, **kw))
        assert batch[r, : len(ids)].tolist() == alone[0].tolist()
    assert not torch.isnan(lm.model(x, valid)).any()
