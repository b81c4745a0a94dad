"""Speculative steps: guesses looked up in the canvas, checked in one pass, the same logits as a step at a time.

What must hold: a draft is the tokens that followed the hole's last tokens where they recur (nearest first,
cut at the first unknown token); a speculative step's answers equal, call for call, what the denoiser without
speculation returns on the same canvases, whether the guesses are taken, refused halfway or never made; and
when they are taken, fewer passes run than calls.
"""

from __future__ import annotations

import pytest
import torch

from diffucoder_lsp.engine.cache import CachedContextDenoiser
from diffucoder_lsp.engine.lookup import draft_after
from diffucoder_lsp.model.config import ModelConfig
from diffucoder_lsp.model.network import DreamModel

MASK = 100


def _known(tokens):
    return torch.tensor([t != MASK for t in tokens])


def test_a_draft_is_what_followed_the_last_tokens_where_they_recur():
    t = torch.tensor([5, 6, 7, 8, 9, 1, 2, 5, 6, MASK, MASK, MASK])
    assert draft_after(t, _known(t.tolist()), 8, 3) == [7, 8, 9]
    assert draft_after(t, _known(t.tolist()), 8, 2) == [7, 8]  # at most max_tokens
    assert draft_after(t, _known(t.tolist()), 8, 0) == []


def test_a_draft_stops_at_the_first_unknown_token_and_can_come_from_after_the_hole():
    t = torch.tensor([3, 4, MASK, MASK, MASK, 11, 3, 4, 12, MASK, 13])
    # "3 4" recurs after the hole: what followed it there, up to the next unknown token
    assert draft_after(t, _known(t.tolist()), 1, 3) == [12]


def test_the_longest_recurring_run_wins_then_the_nearest_occurrence():
    t = torch.tensor([1, 2, 3, 40, 9, 2, 3, 41, 1, 2, 3, MASK])
    assert draft_after(t, _known(t.tolist()), 10, 2) == [40, 9]  # "1 2 3" recurs once; "2 3" is nearer
    u = torch.tensor([2, 3, 40, 9, 2, 3, 41, 2, 3, MASK])
    assert draft_after(u, _known(u.tolist()), 8, 2) == [41, 2]  # the nearest of two "2 3"


def test_no_draft_without_a_recurring_run_of_two():
    t = torch.tensor([1, 2, 3, 4, 5, 6, 3, MASK])  # only "3" recurs: too short to go on
    assert draft_after(t, _known(t.tolist()), 6, 4) == []
    assert draft_after(t, _known(t.tolist()), 7, 4) == []  # the end itself unknown


CFG = ModelConfig(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    mask_token_id=MASK,
    pad_token_id=0,
    eos_token_id=0,
    bos_token_id=0,
    learned_lookahead=True,
)


def _model(lookahead: bool) -> DreamModel:
    torch.manual_seed(0)
    cfg = CFG if lookahead else ModelConfig(**{**CFG.__dict__, "learned_lookahead": False})
    m = DreamModel(cfg).eval()
    if lookahead:
        for layer in m.model.layers:
            layer.self_attn.lookahead_bias.data.normal_(0.0, 2.0)  # heads that read well ahead
    return m


def _canvas():
    """A hole right after "7 8", which recurs earlier followed by 20 21 22 23 24 25 26 27 28."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(30, 99, (1, 70), generator=g)
    x[0, 10:20] = torch.tensor([7, 8, 20, 21, 22, 23, 24, 25, 26, 27])
    x[0, 38:40] = torch.tensor([7, 8])
    x[0, 40:52] = MASK
    return x


def _walk(m, reveal, draft_tokens):
    """Walk the hole a position a call (blocks of one), revealing ``reveal(col, logits)``; the logits of
    every call and the denoiser."""
    x = _canvas()
    valid = torch.ones_like(x, dtype=torch.bool)
    den = CachedContextDenoiser(m, draft_tokens=draft_tokens)
    out = []
    with torch.no_grad():
        for col in range(40, 52):
            ask = torch.zeros_like(valid)
            ask[0, col] = True
            logits = den(x, valid, ask)
            out.append(logits)
            x[0, col] = reveal(col, logits)
    return out, den


@pytest.mark.parametrize("lookahead", [True, False])
@pytest.mark.parametrize(
    "plan",
    [
        "guesses",  # reveal exactly what the canvas suggests: every guess taken
        "refuse",  # break off the guesses halfway
        "model",  # reveal the model's own choice (random weights: the guesses fail)
    ],
)
def test_speculative_steps_answer_as_steps_one_at_a_time(lookahead, plan):
    m = _model(lookahead)
    follow = [20, 21, 22, 23, 24, 25, 26, 27]

    def reveal(col, logits):
        if plan == "model":
            return int(logits.argmax(-1)[0]) % 99 + 1
        if plan == "refuse" and col == 43:
            return 60
        i = col - 40
        return follow[i] if i < len(follow) else 30 + i

    plain, den0 = _walk(m, reveal, draft_tokens=0)
    fast, den = _walk(m, reveal, draft_tokens=7)
    for a, b in zip(plain, fast, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    assert den0.forward_passes == 12 and den0.speculated == 0
    assert den.forward_passes + den.speculated == 12
    if plan == "guesses":
        # the full pass (40); a step at 41 guesses 21..27 after "7 8 20" and answers 41..48 (1 pass, 7
        # answered calls); after 38 nothing recurs: 49, 50, 51 one pass each
        assert (den.forward_passes, den.speculated) == (5, 7)
    if plan == "refuse":
        # 42 and 43 answered from the guesses; 60 at 43 refuses the rest: 44 runs a pass; at 46 "24 25"
        # recurs: 47 and 48 answered, the guess for 48 refused
        assert den.speculated == 4


def test_speculation_is_off_for_batches_blocks_and_refreshes():
    m = _model(True)
    x = _canvas()
    valid = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        for den, ask in [
            (CachedContextDenoiser(m, refresh_every=2), None),
            (CachedContextDenoiser(m), "block"),
        ]:
            y = x.clone()
            for col in range(40, 48, 2 if ask == "block" else 1):
                a = torch.zeros_like(valid)
                a[0, col : col + (2 if ask == "block" else 1)] = True
                den(y, valid, a)
                y[0, col : col + 2] = torch.tensor([20 + col - 40, 21 + col - 40])[
                    : 2 if ask == "block" else 1
                ]
            assert den.speculated == 0
        two = CachedContextDenoiser(m)
        y = x.expand(2, -1).clone()
        for col in range(40, 46):
            a = torch.zeros_like(y, dtype=torch.bool)
            a[:, col] = True
            two(y, valid.expand(2, -1), a)
            y[:, col] = 20 + col - 40
        assert two.speculated == 0


def test_a_negative_draft_budget_is_refused():
    with pytest.raises(ValueError, match="draft_tokens"):
        CachedContextDenoiser(_model(False), draft_tokens=-1)


def test_guesses_that_run_to_the_end_of_the_canvas_are_answered_and_then_dropped():
    """A hole at the canvas's end: the last guess's row predicts a position past the end, which no call asks
    for; a call elsewhere afterwards is an ordinary step, not an index error."""
    m = _model(True)
    x = _canvas()[:, :46].clone()  # the hole 40..45 ends the canvas
    valid = torch.ones_like(x, dtype=torch.bool)
    plain = CachedContextDenoiser(m, draft_tokens=0)
    den = CachedContextDenoiser(m)
    y = x.clone()
    with torch.no_grad():
        for col in range(40, 46):
            ask = torch.zeros_like(valid)
            ask[0, col] = True
            torch.testing.assert_close(den(x, valid, ask), plain(y, valid, ask), atol=1e-5, rtol=0)
            x[0, col] = y[0, col] = 20 + col - 40
        ask = torch.zeros_like(valid)
        ask[0, 5] = True  # a position the guesses never covered
        x[0, 5] = y[0, 5] = MASK
        torch.testing.assert_close(den(x, valid, ask), plain(y, valid, ask), atol=1e-5, rtol=0)
    assert den.speculated == 4  # 42..45 answered from the guesses made at 41


def test_typing_with_a_store_fills_the_same_tokens_with_and_without_guesses(lm):
    """The server's path: blocks of one, greedy, each request of a typing chain reusing the previous one's
    stored context (steps write into the stored canvas and mark what they overwrite). With guesses the fills
    are the same, token for token, and some calls are answered from them."""
    from diffucoder_lsp.engine.infill import infill
    from diffucoder_lsp.engine.reuse import ContextStore
    from diffucoder_lsp.engine.sampler import SamplingOptions

    body = "".join(f"    self.v{i} = v{i}\n" for i in range(12))
    prefix = "class Point:\n    def __init__(self, " + ", ".join(f"v{i}" for i in range(12)) + "):\n" + body
    suffix = "\n\n    def total(self):\n        return self.v0 + self.v1\n"
    opts = SamplingOptions(temperature=0.0, tokens_per_step=1, block_size=1)
    fills, answered = {}, {}
    for draft in (0, 7):
        store = ContextStore(min_tokens=0)
        fills[draft], answered[draft] = [], 0
        for typed in ("", "    s", "    self", "    self.v"):
            den = CachedContextDenoiser(lm.model, store=store, draft_tokens=draft)
            got = infill(lm, prefix + typed + "<|mask|>" + suffix, length=10, options=opts, denoiser=den)
            fills[draft].append(got.holes[0].token_ids)
            answered[draft] += den.speculated
            assert den.forward_passes + den.speculated == got.steps
    assert fills[7] == fills[0]
    assert answered[0] == 0 and answered[7] > 0


def test_a_batch_down_to_its_last_row_answers_that_row_from_its_guesses():
    """A batch's rows step together (no guesses); once every other row is done, the last one is a single
    canvas and its guesses are checked and used, with the same logits as without them. Before, it guessed
    at every step and could never use a guess: the answering call saw the whole batch's shape."""
    m = _model(True)
    x = _canvas().expand(2, -1).clone()
    x[1, 44:52] = 31  # row 1's hole is 40..43 only
    valid = torch.ones_like(x, dtype=torch.bool)
    follow = [20, 21, 22, 23, 24, 25, 26, 27, 40, 41, 42, 43]
    out = {}
    for draft in (0, 7):
        y = x.clone()
        den = CachedContextDenoiser(m, draft_tokens=draft)
        got = []
        with torch.no_grad():
            for col in range(40, 52):
                ask = torch.zeros_like(valid)
                ask[0, col] = True
                ask[1, col] = col < 44
                got.append(den(y, valid, ask))
                y[0, col] = follow[col - 40]
                if col < 44:
                    y[1, col] = 50
        out[draft] = (got, den)
    for a, b in zip(out[0][0], out[7][0], strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    plain, fast = out[0][1], out[7][1]
    assert plain.speculated == 0 and fast.speculated > 0
    assert fast.forward_passes + fast.speculated == plain.forward_passes == 12
