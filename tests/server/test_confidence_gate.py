"""The confidence gate on an in-process server (no transport): a completion scored below ``minConfidence``
answers empty, one above is shown; a request the user made says why; the default comes from the model's
``calibration.json``; the setting is validated (an invalid value keeps the previous one)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from lsprotocol import types

from diffucoder_lsp.engine.confidence import CALIBRATION_FILE, Calibration, SuggestionTokens
from diffucoder_lsp.server.app import build_server
from diffucoder_lsp.server.engine_client import READY, EngineClient, Fill, WithheldText
from diffucoder_lsp.server.settings import Settings, parse_settings

URI = "file:///gate.py"
TEXT = "def main():\n    total = 0\n    return \n"
AT = types.Position(line=2, character=11)  # after "return "


class FakeTokenizer:
    def encode(self, text):
        return text.split()


@pytest.fixture
def server():
    ls = build_server()
    ls.apply_settings({"debounceMs": 0, "speculate": False, "warmContext": False}, initial=True)
    ls.engine.lm, ls.engine.state = SimpleNamespace(tokenizer=FakeTokenizer(), path=None), READY
    ls.shown = []
    ls.show = lambda kind, text: ls.shown.append(text)
    ls.documents.open(URI, TEXT, 1, "python")
    yield ls
    ls.scheduler.shutdown()


def script(ls, certainty: float, text: str = "total") -> list:
    """The engine's fills read ``text``, every token ``certainty`` sure; returns the list of calls."""
    calls = []

    def infill(text_with_hole, lengths, **kwargs):
        calls.append(text_with_hole)
        tokens = SuggestionTokens((certainty,) * 3, (0, 3))
        return Fill([text], steps=1, elapsed_ms=1.0, tokens=(tokens,))

    ls.engine.infill = infill
    return calls


async def test_a_suggestion_below_min_confidence_is_withheld_and_one_above_is_shown(server):
    server.apply_settings({"minConfidence": 0.5})
    script(server, 0.3)
    assert await server.complete_at(URI, AT, automatic=True) is None
    assert server.shown == []  # automatic requests only log why
    server.cache.clear()
    script(server, 0.8)
    answer = await server.complete_at(URI, AT, automatic=True)
    assert answer is not None and answer.completion.text == "total"


async def test_a_request_the_user_made_says_why_once_even_from_the_cache(server):
    server.apply_settings({"minConfidence": 0.5})
    calls = script(server, 0.3)
    assert await server.complete_at(URI, AT, automatic=False) is None
    assert len(server.shown) == 1 and "below the confidence threshold" in server.shown[0]
    assert "0.300" in server.shown[0] and "0.500" in server.shown[0]
    assert await server.complete_at(URI, AT, automatic=False) is None  # answered from the cache
    assert len(calls) == 1 and len(server.shown) == 2


async def test_changing_min_confidence_drops_cached_verdicts(server):
    server.apply_settings({"minConfidence": 0.5})
    script(server, 0.3)
    assert await server.complete_at(URI, AT, automatic=True) is None
    server.apply_settings({"minConfidence": 0})  # 0: show everything
    answer = await server.complete_at(URI, AT, automatic=True)
    assert answer is not None and answer.completion.text == "total"


def test_the_default_is_the_models_calibration_under_the_same_alg():
    engine = EngineClient(ls=None, scheduler=None)
    assert engine.gate(Settings()) == ("first_line_min", 0.0)  # no calibration: off
    engine.calibration = Calibration("all_geomean", 0.4, 0.6, {"alg": "entropy"})
    assert engine.gate(Settings()) == ("all_geomean", 0.4)
    assert engine.gate(Settings(min_confidence=0.7)) == ("all_geomean", 0.7)  # the user's choice wins
    assert engine.gate(Settings(min_confidence=0.0)) == ("all_geomean", 0.0)
    # measured under another algorithm, the calibrated threshold means nothing: off unless set
    assert engine.gate(Settings(alg="maskgit_plus")) == ("all_geomean", 0.0)
    assert engine.gate(Settings(alg="maskgit_plus", min_confidence=0.2)) == ("all_geomean", 0.2)
    # and under another temperature (confidences are read after temperature scaling): off unless set
    engine.calibration = Calibration("first_line_min", 0.17, 0.6, {"alg": "entropy", "temperature": 0.0})
    assert engine.gate(Settings()) == ("first_line_min", 0.17)
    assert engine.gate(Settings(temperature=0.2)) == ("first_line_min", 0.0)
    assert engine.gate(Settings(temperature=0.2, min_confidence=0.3)) == ("first_line_min", 0.3)


async def test_loading_a_model_reads_its_calibration(tmp_path):
    (tmp_path / CALIBRATION_FILE).write_text(
        json.dumps({"statistic": "all_min", "min_confidence": 0.35, "decoding": {"alg": "entropy"}})
    )
    ls = build_server()
    fake = SimpleNamespace(tokenizer=FakeTokenizer(), path=tmp_path, name="fake", device="cpu")
    ls.engine._load_blocking = lambda settings: fake
    try:
        assert await ls.engine.load(Settings())
        assert ls.engine.calibration.min_confidence == 0.35
        assert ls.engine.gate(ls.settings) == ("all_min", 0.35)
        assert EngineClient.for_model(fake).calibration == ls.engine.calibration
    finally:
        ls.scheduler.shutdown()


def test_withheld_text_is_an_empty_string_that_knows_why():
    text = WithheldText("first_line_min", 0.25, 0.5)
    assert text == "" and isinstance(text, str) and not text.strip()
    assert "first_line_min 0.250 < minConfidence 0.500" in text.reason()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf, -0.1, 1.5, "high", True, [0.5]])
def test_an_invalid_min_confidence_keeps_the_previous_value_with_one_message(bad):
    s, problems = parse_settings({"minConfidence": bad}, Settings(min_confidence=0.4))
    assert s.min_confidence == 0.4
    assert len(problems) == 1 and "minConfidence" in problems[0] and "previous value (0.4)" in problems[0]


def test_min_confidence_values_and_the_cache_key():
    assert Settings().min_confidence is None
    for raw, want in ((0, 0.0), (0.55, 0.55), (1, 1.0), (None, None), ("auto", None), ("AUTO ", None)):
        s, problems = parse_settings({"minConfidence": raw}, Settings(min_confidence=0.3))
        assert (s.min_confidence, problems) == (want, []), raw
    assert parse_settings({"min_confidence": 0.2})[0].min_confidence == 0.2
    assert Settings(min_confidence=0.5).sampling_key() != Settings().sampling_key()


def test_an_invalid_min_confidence_over_lsp_settings_is_shown_once(server):
    server.apply_settings({"minConfidence": 0.6})
    server.apply_settings({"minConfidence": float("nan"), "temperature": 0.3})
    assert server.settings.min_confidence == 0.6 and server.settings.temperature == 0.3
    assert len(server.shown) == 1 and "minConfidence" in server.shown[0]


@pytest.fixture(scope="module")
def tiny_lm(tiny_ckpt):
    from diffucoder_lsp.model.loading import load_model

    return load_model(str(tiny_ckpt), device="cpu")


def test_the_real_engine_scores_its_completions(tiny_lm):
    """Through the real decoding path: every completion carries its tokens and score; a threshold of 1 withholds
    what a random model writes, 0 shows it."""
    engine = EngineClient.for_model(tiny_lm)
    base = dict(max_tokens=8, should_stop=lambda: False)
    sampling = dict(temperature=0.0, eos_penalty=100.0)  # no end token: eight tokens to score
    shown = engine.complete("x = ", "\n", settings=Settings(**sampling, min_confidence=0.0), **base)
    assert shown.texts[0].strip() and not isinstance(shown.texts[0], WithheldText)
    assert len(shown.tokens) == 1 and len(shown.tokens[0].certainty) == 8
    assert 0.0 < shown.confidence < 1.0
    held = engine.complete("x = ", "\n", settings=Settings(**sampling, min_confidence=1.0), **base)
    assert isinstance(held.texts[0], WithheldText) and held.confidence == shown.confidence


def test_ranked_lines_are_gated_by_the_calibrations_ranked_part():
    """A ranked line is scored by the base's token probabilities, another scale: the calibration's ranked part
    gates it (whatever the unmasking algorithm or temperature, which a beam search does not use); without one
    the default gate applies as before; minConfidence still wins."""
    engine = EngineClient(ls=None, scheduler=None)
    ranked = Calibration("first_line_min", 0.106, 0.6, {"rankLines": 8})
    engine.calibration = Calibration(
        "first_line_min", 0.14, 0.6, {"alg": "entropy", "temperature": 0.0}, {}, ranked
    )
    assert engine.gate(Settings()) == ("first_line_min", 0.14)
    assert engine.gate(Settings(), ranked=True) == ("first_line_min", 0.106)
    assert engine.gate(Settings(temperature=0.2), ranked=True) == ("first_line_min", 0.106)
    assert engine.gate(Settings(min_confidence=0.5), ranked=True) == ("first_line_min", 0.5)
    engine.calibration = Calibration("first_line_min", 0.14, 0.6, {"alg": "entropy"})
    assert engine.gate(Settings(), ranked=True) == ("first_line_min", 0.14)


def test_a_ranked_completion_goes_through_the_ranked_gate(tiny_lm):
    """Through the real path: with rankLines on, the rest of a line is a ranked line, withheld by a ranked
    threshold of 1 while the default gate (0) would show it; without rankLines the default gate applies."""
    engine = EngineClient.for_model(tiny_lm)
    engine.calibration = Calibration(
        "first_line_min",
        0.0,
        0.6,
        {"alg": "entropy", "temperature": 0.0},
        {},
        Calibration("first_line_min", 1.0),
    )
    base = dict(max_tokens=6, should_stop=lambda: False)
    held = engine.complete("x = foo(", ")\n", settings=Settings(rank_lines=2, temperature=0.0), **base)
    assert isinstance(held.texts[0], WithheldText) and held.texts[0].threshold == 1.0
    plain = engine.complete("x = foo(", ")\n", settings=Settings(temperature=0.0, eos_penalty=100.0), **base)
    assert not isinstance(plain.texts[0], WithheldText)
