"""Token healing: the lead backed off before each hole, its exact round trip, and the sampler's constraint on
every decoding path (full canvas, context cache, reuse, blocks, threshold, entropy bound, origin)."""

from __future__ import annotations

import random

import pytest
import torch

from diffucoder_lsp.engine.cache import CachedContextDenoiser
from diffucoder_lsp.engine.choice import pick_tokens
from diffucoder_lsp.engine.denoiser import FullCanvasDenoiser
from diffucoder_lsp.engine.healing import REPLACEMENT, HoleLead, LeadConstraint, lead_constraint, vocab_index
from diffucoder_lsp.engine.infill import infill, infill_stream, prepare_infill
from diffucoder_lsp.engine.reuse import ContextStore
from diffucoder_lsp.engine.sampler import SamplingOptions, denoise, run_to_end

M = "<|mask|>"
# a space after "return", an indent the tiny tokenizer spells "   " + " return", a half word
TEXT = f"def add(a, b):\n    return {M}\n\n\nclass A:\n    {M}\n\nprint(fibo{M})\n"
LEADS = [" ", "    ", "o"]
RANDOM = dict(temperature=1.0, top_p=None)


def filled(text: str, holes) -> str:
    for hole in holes:
        text = text.replace(M, hole.text, 1)
    return text


def assert_spelled(tok, res, text: str, leads: list[str]) -> None:
    """Each hole's tokens start with its lead exactly once, and the result is the input with holes filled."""
    assert [h.lead for h in res.holes] == leads
    for hole in res.holes:
        decoded = tok.decode(hole.token_ids)
        assert decoded.startswith(hole.lead), (hole.lead, decoded)
        assert decoded[len(hole.lead) :] == hole.text
        assert len(hole.token_ids) == len(hole.reveal_step) == len(hole.confidence)
    assert res.text == filled(text, res.holes)


# --- the vocabulary index ----------------------------------------------------------------------------------


def test_token_texts_are_cached_and_the_index_matches_a_scan(tok):
    texts = tok.token_texts
    assert texts is tok.token_texts and len(texts) == tok.vocab_size
    assert texts[tok.mask_id] == M and texts[tok.encode("x")[0]] == "x"
    index = vocab_index(tok)
    assert index is vocab_index(tok)
    for prefix in [" ", "  ", "    ", "\n", "re", "(", "a", "é", "\t", "zzzz", "<|"]:
        scan = sorted(
            i
            for i, t in enumerate(texts)
            if t.startswith(prefix) and REPLACEMENT not in t and i not in tok.special_ids
        )
        assert sorted(index.starting_with(prefix).tolist()) == scan
    assert len(index.starting_with(" ")) > 5 and len(index.starting_with("<|")) == 0  # specials left out


# --- backing off: the text round trip ----------------------------------------------------------------------


def random_code(rng: random.Random) -> str:
    pieces = [
        " ",
        "  ",
        "    ",
        "\t",
        "\n",
        "\r\n",
        "return",
        " x",
        "self",
        ".",
        "(",
        ")",
        ":",
        "=",
        "0",
        "42",
    ]
    pieces += ["é", "日本", "😀", "café", "_id", "fib", "'", '"', "#", " \n", "\n    "]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))


def test_lead_is_the_last_token_and_round_trips_exactly(tok):
    rng = random.Random(0)
    cases = [random_code(rng) for _ in range(400)]
    cases += ["return ", "x = 1\n    ", "a\r\n", "\t\t", "café", "😀", " ", "x = 1  ", "é"]
    healed = 0
    for before in cases:
        canvas = prepare_infill(tok, before + M + "\nz = 1\n", length=3, heal=True)
        (a, b), seg, lead = canvas.hole_spans[0], canvas.segments[0], canvas.leads[0]
        assert seg + lead == before and canvas.segments[-1] == "\nz = 1\n"
        assert tok.decode(canvas.ids[:a], skip_special=False) == seg
        assert canvas.ids[a:b] == [tok.mask_id] * 3 and canvas.ids[b:] == tok.encode("\nz = 1\n")
        full = tok.encode(before)
        if lead:
            healed += 1
            assert canvas.ids[:a] == full[:-1] and tok.token_texts[full[-1]] == lead
        else:  # only an empty text or a last token that is not clean text keeps its place
            assert canvas.ids[:a] == full
            assert not full or REPLACEMENT in tok.token_texts[full[-1]]
    assert healed > 300


@pytest.mark.parametrize(
    ("before", "lead"),
    [("def add(a, b):\n    return ", " "), ("x = 1\n    ", "    "), ("x = 1\n", "\n"), ("y = fibo", "o")],
)
def test_leads_at_common_boundaries(tok, before, lead):
    canvas = prepare_infill(tok, before + M, length=4, heal=True)
    assert canvas.leads == [lead] and canvas.segments[0] == before[: -len(lead)]


def test_nothing_is_backed_off_without_a_clean_last_token(tok):
    assert prepare_infill(tok, M + "x = 1\n", heal=True).leads == [""]  # the very start of the text
    canvas = prepare_infill(tok, f"a = 1\n{M}{M}", length=2, heal=True)  # nothing between the two holes
    n = len(tok.encode("a = 1\n")) - 1
    assert canvas.leads == ["\n", ""] and canvas.hole_spans == [(n, n + 2), (n + 2, n + 4)]
    assert tok.encode("x<|endoftext|>")[-1] == tok.eos_id
    assert prepare_infill(tok, f"x<|endoftext|>{M}", heal=True).leads == [""]  # a special token stays
    assert REPLACEMENT in tok.token_texts[tok.encode("é")[-1]]  # the tiny tokenizer splits é into bytes
    assert prepare_infill(tok, f"é{M}", heal=True).leads == [""]
    plain = prepare_infill(tok, TEXT, length=4)  # off unless asked for
    assert plain.leads == ["", "", ""] and plain.segments[0] == "def add(a, b):\n    return "


def test_several_holes_each_get_their_own_lead(lm, tok):
    canvas = prepare_infill(tok, TEXT, length=5, heal=True)
    assert canvas.leads == LEADS
    start = 0
    for j, (a, b) in enumerate(canvas.hole_spans):
        assert tok.decode(canvas.ids[start:a], skip_special=False) == canvas.segments[j]
        assert canvas.ids[a:b] == [tok.mask_id] * 5
        start = b
    assert [h.row for h in canvas.hole_leads()] == [0, 0, 0]
    assert [(h.start, h.end, h.text) for h in canvas.hole_leads()] == [
        (a, b, lead) for (a, b), lead in zip(canvas.hole_spans, LEADS, strict=True)
    ]
    res = infill(lm, TEXT, length=5, options=SamplingOptions(**RANDOM, seed=3))
    assert_spelled(tok, res, TEXT, LEADS)
    assert res.to_json()["holes"][1]["lead"] == "    "


# --- the constraint on every decoding path ------------------------------------------------------------------

PATHS = {
    "full": (dict(RANDOM), None),
    "exact_with_heal": (dict(RANDOM, exact=True, steps=10), None),
    "parallel": (dict(RANDOM, tokens_per_step=4), None),
    "cache": (dict(RANDOM), lambda lm: CachedContextDenoiser(lm.model, refresh_every=0)),
    "cache_refresh": (
        dict(RANDOM, tokens_per_step=2),
        lambda lm: CachedContextDenoiser(lm.model, refresh_every=3),
    ),
    "blocks": (dict(RANDOM, block_size=3, tokens_per_step=2), lambda lm: CachedContextDenoiser(lm.model)),
    "threshold": (dict(RANDOM, threshold=0.2), None),
    "entropy_bound": (dict(RANDOM, entropy_bound=2.0), lambda lm: CachedContextDenoiser(lm.model)),
    "origin": (dict(RANDOM, alg="origin"), None),
    "maskgit_alg_temp": (dict(RANDOM, alg="maskgit_plus", alg_temp=0.5, top_p=0.9), None),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("length", [6, "auto"])
def test_every_decoding_path_spells_the_leads(lm, tok, path, length):
    opts, make = PATHS[path]
    for seed in range(4 if length == 6 else 2):  # an auto hole is 48 positions: fewer runs
        options = SamplingOptions(**opts, seed=seed)
        denoiser = make(lm) if make else None
        res = infill(lm, TEXT, length=length, options=options, denoiser=denoiser, heal=True)
        assert_spelled(tok, res, TEXT, LEADS)


def test_reused_context_spells_the_leads(lm, tok):
    store = ContextStore(min_tokens=0, max_fresh=1.0)
    typed = TEXT.replace("class A:", "class Ab:")
    for seed, text in enumerate([TEXT, typed, TEXT]):
        denoiser = CachedContextDenoiser(lm.model, store=store)
        res = infill(lm, text, length=6, options=SamplingOptions(**RANDOM, seed=seed), denoiser=denoiser)
        assert_spelled(tok, res, text, LEADS)
    assert store.hits == 2 and denoiser.full_passes == 0


def test_without_the_constraint_a_healed_canvas_breaks_its_lead(lm, tok):
    """What the constraint prevents: the random model, left free on a healed canvas, does not spell the lead."""
    canvas = prepare_infill(tok, TEXT, length=6, heal=True)
    broken = 0
    for seed in range(4):
        x = torch.tensor([canvas.ids])
        opts = SamplingOptions(**RANDOM, seed=seed)
        _, out = run_to_end(denoise(FullCanvasDenoiser(lm.model), x, None, mask_id=tok.mask_id, options=opts))
        for (a, b), lead in zip(canvas.hole_spans, canvas.leads, strict=True):
            broken += not tok.decode(out[0, a:b].tolist()).startswith(lead)
    assert broken >= 4


# --- the constraint, step by step ---------------------------------------------------------------------------

GREEDY = SamplingOptions(temperature=0.0)


def greedy(logits):
    return pick_tokens(logits, GREEDY, None)


def one_id(tok, text: str) -> int:
    (i,) = vocab_index(tok).exactly(text)[:1]
    return i


def scripted_step(lm, tok, hole: int, filled_in: dict[int, int], prefer: list[dict[int, float]], lead="    "):
    """One constrained pick on a canvas ``ctx + hole masks`` with some hole positions already revealed."""
    ctx = tok.encode("x = 1\n")
    x = torch.tensor([ctx + [tok.mask_id] * hole])
    a = len(ctx)
    for k, t in filled_in.items():
        x[0, a + k] = t
    eligible = x == tok.mask_id
    logits = torch.zeros(int(eligible.sum()), lm.config.vocab_size)
    for row, scores in enumerate(prefer):
        for t, v in scores.items():
            logits[row, t] = v
    constraint = LeadConstraint(vocab_index(tok), [HoleLead(0, a, a + hole, lead)], tok.mask_id)
    return constraint.pick(logits, x, eligible, greedy).tokens.tolist(), constraint


def test_a_head_may_take_part_of_the_lead_and_the_next_position_carries_on(lm, tok):
    sp3, sp4, ret, x = one_id(tok, "   "), one_id(tok, "    "), one_id(tok, " return"), tok.encode("x")[0]
    # same step: the head takes "   " (x is not allowed), the next position is picked again: " return", not x
    picked, _ = scripted_step(lm, tok, 3, {}, [{x: 10, sp3: 5}, {x: 10, ret: 5}, {x: 10}])
    assert picked == [sp3, ret, x]
    # the next position already holds " return": "   " completes the lead
    picked, _ = scripted_step(lm, tok, 3, {1: ret}, [{sp3: 10, sp4: 5}, {x: 10}])
    assert picked[0] == sp3
    # it holds x: only a token that spells the whole lead fits before it
    picked, _ = scripted_step(lm, tok, 3, {1: x}, [{sp3: 10, sp4: 5}, {x: 10}])
    assert picked[0] == sp4
    # a one-position hole cannot split its lead
    picked, _ = scripted_step(lm, tok, 1, {}, [{sp3: 10, sp4: 5}])
    assert picked == [sp4]


def test_a_spelled_lead_turns_the_constraint_off(lm, tok):
    sp3, ret, x = one_id(tok, "   "), one_id(tok, " return"), tok.encode("x")[0]
    picked, constraint = scripted_step(lm, tok, 3, {0: sp3, 1: ret}, [{x: 10}])
    assert picked == [x] and not constraint.active
    picked, constraint = scripted_step(lm, tok, 3, {0: sp3}, [{x: 10, ret: 5}, {x: 10}])
    assert picked == [ret, x] and constraint.active  # the rest " " moved on to the next position


# --- exact mode and unhealed runs are what they were --------------------------------------------------------


def test_exact_mode_is_the_reference_decoder(lm, tok):
    exact = SamplingOptions(exact=True, steps=12, temperature=0.0)
    res = infill(lm, TEXT, length=6, options=exact)
    assert [h.lead for h in res.holes] == ["", "", ""]
    canvas = prepare_infill(tok, TEXT, length=6)
    _, out = run_to_end(
        denoise(
            FullCanvasDenoiser(lm.model),
            torch.tensor([canvas.ids]),
            None,
            mask_id=tok.mask_id,
            options=exact,
            allowed_vocab=min(tok.vocab_size, lm.config.vocab_size),
            stop_ids=tuple(sorted(tok.stop_ids)),
        )
    )
    assert [h.token_ids for h in res.holes] == [out[0, a:b].tolist() for a, b in canvas.hole_spans]
    healed = infill(lm, TEXT, length=6, options=exact, heal=True)
    assert [h.lead for h in healed.holes] == LEADS


@pytest.mark.parametrize(
    "opts", [dict(RANDOM), dict(RANDOM, block_size=2), dict(temperature=0.0, threshold=0.5)]
)
def test_holes_with_nothing_to_heal_fill_as_before(lm, tok, opts):
    text = f"{M} = 1\nx<|endoftext|>{M}\n"  # the start of the text, then a special token: no leads
    assert lead_constraint(tok, prepare_infill(tok, text, heal=True).hole_leads()) is None
    for seed in range(3):
        options = SamplingOptions(**opts, seed=seed)
        on = infill(lm, text, length=5, options=options, heal=True)
        off = infill(lm, text, length=5, options=options, heal=False)
        assert [h.token_ids for h in on.holes] == [h.token_ids for h in off.holes] and on.text == off.text


def test_the_streamed_canvas_shows_every_character_once(lm, tok):
    """What the TUI draws (kept text, segments, the holes' tokens as revealed) is the filled text."""
    gen = infill_stream(lm, TEXT, length=6, options=SamplingOptions(**RANDOM, seed=1))
    revealed: dict[int, int] = {}
    while True:
        try:
            canvas, event = next(gen)
        except StopIteration as stop:
            res = stop.value
            break
        revealed.update(zip(event.cols.tolist(), event.tokens.tolist(), strict=True))
    view = canvas.kept_prefix
    for j, (a, b) in enumerate(canvas.hole_spans):
        view += canvas.segments[j] + tok.decode([revealed[c] for c in range(a, b)])
    view += canvas.segments[-1] + canvas.kept_suffix
    assert view == res.text and canvas.leads == LEADS
