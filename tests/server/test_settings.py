"""Settings parsing: camelCase and snake_case, nesting, invalid values keep the previous value, unknown keys."""

from __future__ import annotations

import math

import pytest

from diffucoder_lsp.server.settings import Settings, parse_settings, problems_message


def test_defaults_are_speed_minded():
    s = Settings()
    assert s.tokens_per_step == 1 and s.temperature == 0.0 and s.alg == "entropy"
    assert s.max_tokens_single_line < s.max_tokens <= 64


def test_camel_snake_and_nested_section():
    s, problems = parse_settings(
        {"diffucoder": {"maxTokens": 32, "tokens_per_step": 4, "enabledLanguages": "python"}}
    )
    assert problems == []
    assert (s.max_tokens, s.tokens_per_step, s.enabled_languages) == (32, 4, ("python",))
    assert s.language_enabled("Python") and not s.language_enabled("rust")


def test_invalid_values_keep_the_previous_value_and_are_reported():
    base = Settings(temperature=0.7, max_tokens=30, steps=8, device="cpu")
    s, problems = parse_settings(
        {"temperature": -1, "maxTokens": "many", "steps": 0, "device": "gpu9", "x": 1, "topP": 0.5}, base
    )
    assert (s.temperature, s.max_tokens, s.steps, s.device, s.top_p) == (0.7, 30, 8, "cpu", 0.5)
    assert len(problems) == 5 and any("unknown setting 'x'" in p for p in problems)
    assert "temperature" in problems_message(problems) and "previous value (0.7)" in problems_message(
        problems
    )


def test_absent_keys_keep_the_base_and_none_changes_nothing():
    base = Settings(model="/m", device="cpu")
    s, problems = parse_settings({"debounceMs": 10}, base)
    assert (s.model, s.device, s.debounce_ms, problems) == ("/m", "cpu", 10, [])
    assert parse_settings(None, base) == (base, [])
    s, problems = parse_settings(["not", "an", "object"], base)
    assert s == base and len(problems) == 1 and "keeping the previous settings" in problems[0]
    # an empty Lua table arrives as [] (Neovim's setup({})): no settings, and nothing to complain about
    assert parse_settings([], base) == (base, [])
    assert parse_settings({"diffucoder": []}, base) == (base, [])


def test_model_and_sampling_keys():
    a = Settings()
    assert a.model_key() != Settings(quant="4bit").model_key()
    assert a.model_key() == Settings(temperature=0.5).model_key()
    assert a.sampling_key() != Settings(temperature=0.5).sampling_key()
    assert a.sampling_key() == Settings(debounce_ms=999).sampling_key()
    assert parse_settings({"model": "default"})[0].model is None
    assert Settings().to_json()["maxTokensSingleLine"] == 20


def test_engine_speed_settings():
    s, problems = parse_settings({"threshold": 0.9, "contextCache": False, "cacheRefreshEvery": 2})
    assert (s.threshold, s.context_cache, s.cache_refresh_every, problems) == (0.9, False, 2, [])
    s, problems = parse_settings({"threshold": 1.5, "contextCache": "yes"})
    assert (s.threshold, s.context_cache) == (None, True) and len(problems) == 2
    assert Settings(threshold=0.9).sampling_key() != Settings().sampling_key()


def test_block_size_setting_and_the_origin_conflict():
    assert (
        Settings().block_size == 1
    )  # left to right: a hole stops once its cut is decided (engine/options.py)
    s, problems = parse_settings({"blockSize": 0})
    assert s.block_size == 0 and problems == []
    assert Settings(block_size=16).sampling_key() != Settings().sampling_key()
    s, problems = parse_settings({"blockSize": -1}, Settings(block_size=8))
    assert s.block_size == 8 and "blockSize" in problems[0]
    # origin reveals at random: a threshold or a block order cannot apply, and the request must not fail later
    s, problems = parse_settings({"alg": "origin", "blockSize": 16, "threshold": 0.9})
    assert (s.alg, s.block_size, s.threshold) == ("origin", 0, None)
    assert len(problems) == 1 and "origin" in problems[0]
    # choosing origin alone is fine: the default blockSize silently does not apply to it
    s, problems = parse_settings({"alg": "origin"})
    assert s.alg == "origin" and problems == []


def test_block_size_reaches_the_sampler():
    from diffucoder_lsp.server.engine_client import sampling_options

    assert sampling_options(Settings()).block_size == 1
    # one position a block leaves nothing to reveal in parallel: parallel settings widen it, wider ones stay
    assert sampling_options(Settings(tokens_per_step=3)).block_size == 32
    # a threshold alone keeps the order and reveals sure runs left to right
    assert sampling_options(Settings(threshold=0.9)).block_size == 1
    assert sampling_options(Settings(threshold=0.9)).runs
    assert sampling_options(Settings(entropy_bound=0.5)).block_size == 32
    assert sampling_options(Settings(tokens_per_step=3, block_size=8)).block_size == 8
    assert sampling_options(Settings(block_size=0)).block_size is None
    assert sampling_options(Settings(alg="origin")).block_size is None  # would be bad input otherwise
    assert sampling_options(Settings(entropy_bound=0.5)).entropy_bound == 0.5


def test_entropy_bound_setting_and_its_conflicts():
    s, problems = parse_settings({"entropyBound": 1})
    assert s.entropy_bound == 1.0 and problems == []
    assert Settings(entropy_bound=1.0).sampling_key() != Settings().sampling_key()
    for bad in (-0.5, "1", True, 1000):
        s, problems = parse_settings({"entropyBound": bad})
        assert s.entropy_bound is None and len(problems) == 1 and "entropyBound" in problems[0]
    # both rules in one message: the threshold stays; the bound set later over a threshold replaces it
    s, problems = parse_settings({"entropyBound": 1, "threshold": 0.9})
    assert (s.threshold, s.entropy_bound) == (0.9, None) and "alternatives" in problems[0]
    s, problems = parse_settings({"entropyBound": 2}, base=Settings(threshold=0.9))
    assert (s.threshold, s.entropy_bound) == (None, 2.0) and len(problems) == 1
    s, problems = parse_settings({"alg": "origin", "entropyBound": 1})
    assert (s.alg, s.entropy_bound) == ("origin", None) and "origin" in problems[0]


def test_end_early_setting():
    assert Settings().end_early is True
    s, problems = parse_settings({"endEarly": False})
    assert s.end_early is False and problems == []
    assert Settings(end_early=False).sampling_key() != Settings().sampling_key()
    s, problems = parse_settings({"endEarly": "no"})
    assert s.end_early is True and "endEarly" in problems[0]


def test_warm_context_setting():
    assert Settings().warm_context is True
    s, problems = parse_settings({"warmContext": False})
    assert s.warm_context is False and problems == []
    s, problems = parse_settings({"diffucoder": {"warmContext": 3}})
    assert s.warm_context is True and "warmContext" in problems[0]


def test_speculate_setting():
    assert Settings().speculate is True
    s, problems = parse_settings({"speculate": False})
    assert s.speculate is False and problems == []
    s, problems = parse_settings({"speculate": "off"})
    assert s.speculate is True and "speculate" in problems[0]


HOSTILE = [
    float("nan"),
    float("inf"),
    -float("inf"),
    10**400,  # JSON integers have no limit; float() of this overflows
    18446744073709551616,
    -(10**30),
    1e308,
    "1",
    True,
    None,
    [1],
    {"a": 1},
    "x" * 100_000,
]


@pytest.mark.parametrize("key", [k for k in Settings().to_json()])
@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v)[:20])
def test_no_value_fails_parsing_and_a_bad_one_keeps_the_previous_setting(key, value):
    """Every field is checked for type, finiteness and range; a bad one is reported once, the rest apply."""
    base = Settings(debounce_ms=7)
    s, problems = parse_settings({key: value, "debounceMs": 11}, base)
    assert s.debounce_ms == 11 or key == "debounceMs"  # the valid field of the same message applied
    if problems:
        assert len(problems) == 1 and problems[0].startswith(f"invalid {key}")
        assert len(problems[0]) < 300  # a pasted megabyte does not become a megabyte message
        if key != "debounceMs":
            assert getattr(s, _snake(key)) == getattr(base, _snake(key))
    for name in ("temperature", "top_p", "eos_penalty", "prefix_share"):
        assert math.isfinite(getattr(s, name))
    assert 0 <= s.seed < 2**32


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def test_the_values_the_hardening_issue_names_are_refused():
    base = Settings(steps=6, seed=3, prefix_share=0.6, eos_penalty=1.0, temperature=0.4)
    for raw, field, keep in (
        ({"steps": float("inf")}, "steps", 6),
        ({"steps": 1e999}, "steps", 6),
        ({"seed": 18446744073709551616}, "seed", 3),
        ({"prefixShare": float("nan")}, "prefix_share", 0.6),
        ({"eosPenalty": float("nan")}, "eos_penalty", 1.0),
        ({"temperature": float("nan")}, "temperature", 0.4),
    ):
        s, problems = parse_settings(raw, base)
        assert getattr(s, field) == keep and len(problems) == 1, raw


def test_backend_token_is_a_header_safe_string_and_reaches_the_backend_client(monkeypatch):
    s, problems = parse_settings({"backendToken": "s3cr3t-token"})
    assert problems == [] and s.backend_token == "s3cr3t-token"
    assert parse_settings({"backendToken": ""})[0].backend_token is None
    for bad in ("two words", "line\nbreak", 42, "é"):
        s, problems = parse_settings({"backendToken": bad, "maxTokens": 30})
        assert (
            s.backend_token is None and s.max_tokens == 30 and len(problems) == 1
        )  # only that field refused
    assert Settings(backend_token="a").model_key() != Settings(backend_token="b").model_key()  # reconnects

    from diffucoder_lsp.server import engine_client

    seen = []

    class FakeRemote:
        def __init__(self, url, token):
            seen.append((url, token))

        def connect(self):
            return self

    monkeypatch.setattr(engine_client, "RemoteModel", FakeRemote)
    client = engine_client.EngineClient(ls=None, scheduler=None)
    client._load_blocking(Settings(model="http://127.0.0.1:8765", backend_token="tok"))
    assert seen == [("http://127.0.0.1:8765", "tok")]
