"""``rankLines``: a single-line completion as the best of several candidate lines (engine/ranking.py)."""

from __future__ import annotations

import math

import pytest

from diffucoder_lsp.engine import ranking
from diffucoder_lsp.engine.confidence import DEFAULT_STATISTIC, Calibration, statistic
from diffucoder_lsp.server.engine_client import EngineClient
from diffucoder_lsp.server.results import WithheldText
from diffucoder_lsp.server.scheduler import Cancelled
from diffucoder_lsp.server.settings import Settings, parse_settings


@pytest.fixture(scope="module")
def tiny_lm(tiny_ckpt):
    from diffucoder_lsp.model.loading import load_model

    return load_model(str(tiny_ckpt), device="cpu")


def test_setting_is_off_by_default_validated_and_part_of_the_cache_key():
    assert Settings().rank_lines == 0
    s, problems = parse_settings({"rankLines": 8})
    assert s.rank_lines == 8 and problems == []
    kept, problems = parse_settings({"rankLines": 17}, s)
    assert kept.rank_lines == 8 and "rankLines" in problems[0]
    assert s.sampling_key() != Settings().sampling_key()


@pytest.mark.parametrize("suffix", ["\n    return total\n", ")\n    return total\n"])
def test_a_completion_after_code_on_its_line_is_the_rankings_best_line(tiny_lm, suffix):
    """At the end of a line or mid-line: the completion is the engine's ranking of the same context."""
    engine = EngineClient.for_model(tiny_lm)
    prefix = "def add(a, b):\n    total = ("
    settings = Settings(rank_lines=3, min_confidence=0.0)
    fill = engine.complete(prefix, suffix, settings=settings, max_tokens=5, should_stop=lambda: False)
    ctx = engine._context(prefix, suffix, settings)
    want = ranking.rank_with(tiny_lm, ctx.prefix, ctx.suffix, width=3, max_tokens=5)
    assert fill.texts == [want.best.text] and "\n" not in fill.texts[0]
    assert fill.steps == want.passes
    # scored for the gate by the probabilities the ranking read: every token past the healed lead, in order
    certainty = fill.tokens[0].certainty
    assert certainty and all(0.0 < c <= 1.0 for c in certainty)
    assert list(certainty) == pytest.approx(
        [math.exp(x) for x in want.best.token_logprobs[-len(certainty) :]]
    )
    assert fill.confidence == statistic(fill.tokens[0], DEFAULT_STATISTIC)
    held = engine.complete(
        prefix,
        suffix,
        settings=Settings(rank_lines=3, min_confidence=1.0),
        max_tokens=5,
        should_stop=lambda: False,
    )
    assert isinstance(held.texts[0], WithheldText) and held.confidence == fill.confidence
    plain = engine.complete(prefix, suffix, settings=Settings(), max_tokens=5, should_stop=lambda: False)
    assert plain.tokens  # rankLines 0: the diffusion path, scored as before


def test_a_completion_on_a_blank_line_is_not_ranked_and_a_stopped_ranking_is_cancelled(tiny_lm):
    engine = EngineClient.for_model(tiny_lm)
    settings = Settings(rank_lines=3, min_confidence=0.0)
    block = engine.complete("def f(x):\n    ", "", settings=settings, max_tokens=5, should_stop=lambda: False)
    assert block.tokens  # nothing before the cursor on its line: the diffusion path
    calls = []

    def stop_after_first() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        engine.complete(
            "x = [1, 2, 3]\ny = ", "\n", settings=settings, max_tokens=6, should_stop=stop_after_first
        )


def test_rank_invoked_setting_defaults_to_the_calibrated_width():
    assert Settings().rank_invoked is None
    s, problems = parse_settings({"rankInvoked": 4})
    assert s.rank_invoked == 4 and problems == []
    kept, problems = parse_settings({"rankInvoked": 17}, s)
    assert kept.rank_invoked == 4 and "rankInvoked" in problems[0]
    back, problems = parse_settings({"rankInvoked": None}, s)
    assert back.rank_invoked is None and problems == []

    engine = EngineClient(None, None)
    assert engine.invoked(Settings()) == Settings()  # no calibration: no ranked lines
    engine.calibration = Calibration("first_line_min", 0.1, 0.6, {}, {}, Calibration("first_line_min", 0.1))
    assert engine.invoked(Settings()).rank_lines == 0  # a ranked part without its width: none either
    engine.calibration = Calibration(
        "first_line_min", 0.1, 0.6, {}, {}, Calibration("first_line_min", 0.1, 0.6, {"rankLines": 8})
    )
    assert engine.invoked(Settings()).rank_lines == 8
    assert engine.invoked(Settings(rank_invoked=3)).rank_lines == 3
    assert engine.invoked(Settings(rank_invoked=0, rank_lines=2)).rank_lines == 2  # 0: as automatic requests


async def test_a_request_made_by_hand_is_ranked_and_an_automatic_one_is_not(tiny_lm, monkeypatch):
    """Over the server's real path: the manual trigger gets ranked lines at the calibrated width, typing does
    not (it must stay fast), and the two are cached apart."""
    from lsprotocol import types

    from diffucoder_lsp.server.app import build_server
    from diffucoder_lsp.server.engine_client import READY

    widths = []
    real = ranking.rank_with

    def spy(lm, prefix, suffix, **kwargs):
        widths.append(kwargs["width"])
        return real(lm, prefix, suffix, **kwargs)

    monkeypatch.setattr(ranking, "rank_with", spy)
    ls = build_server()
    try:
        ls.apply_settings(
            {"debounceMs": 0, "speculate": False, "warmContext": False, "minConfidence": 0.0}, initial=True
        )
        ls.engine.lm, ls.engine.state = tiny_lm, READY
        ls.engine.calibration = Calibration(
            "first_line_min", 0.0, 0.6, {}, {}, Calibration("first_line_min", 0.0, 0.6, {"rankLines": 3})
        )
        uri = "file:///ranked.py"
        ls.documents.open(uri, "def add(a, b):\n    total = (\n    return total\n", 1, "python")
        at = types.Position(line=1, character=13)
        await ls.complete_at(uri, at, automatic=True)
        assert widths == []
        await ls.complete_at(uri, at, automatic=False)
        assert widths == [3]
        ls.apply_settings({"rankInvoked": 0})
        await ls.complete_at(uri, at, automatic=False)
        assert widths == [3]  # 0: as typing (rankLines 0), answered from the cache of the automatic request

        # typing through a ranked suggestion keeps it: the automatic requests after it are served from the cache
        ls.cache.clear()
        ls.apply_settings({"rankInvoked": None})
        shown = await ls.complete_at(uri, at, automatic=False)
        assert widths == [3, 3] and shown is not None and len(shown.completion.text) > 1
        text = shown.completion.text
        ls.documents.open(
            uri, "def add(a, b):\n    total = (" + text[0] + "\n    return total\n", 2, "python"
        )
        calls = []
        real_infill = ls.engine.infill
        ls.engine.infill = lambda *a, **k: calls.append(1) or real_infill(*a, **k)
        typed = await ls.complete_at(uri, types.Position(line=1, character=14), automatic=True)
        assert typed is not None and typed.completion.text == text[1:] and calls == [] and widths == [3, 3]
    finally:
        ls.scheduler.shutdown()
