"""The completion cache: exact hits, typed-ahead hits, LRU eviction, keys."""

from __future__ import annotations

from diffucoder_lsp.server.cache import CompletionCache, Hit


def test_exact_and_typed_ahead_hits():
    c = CompletionCache(4)
    c.put("k", "x = fo", ")\n", "o(1, 2")
    assert c.get("k", "x = fo", ")\n") == Hit("o(1, 2", 0)
    assert c.get("k", "x = foo(", ")\n") == Hit("1, 2", 2)
    assert c.get("k", "x = foo(1, 2", ")\n") is None  # everything typed: nothing left to offer
    assert c.get("k", "x = fox", ")\n") is None  # typed something else
    assert c.get("k", "x = foo(", "]\n") is None  # different suffix
    assert c.get("other", "x = fo", ")\n") is None  # different settings/mode
    assert c.hits == 2 and c.misses == 4


def test_lru_eviction_and_resize():
    c = CompletionCache(2)
    c.put("k", "a", "", "1")
    c.put("k", "b", "", "2")
    assert c.get("k", "a", "") is not None  # a is now most recent
    c.put("k", "c", "", "3")
    assert c.get("k", "b", "") is None and c.get("k", "a", "") is not None
    c.resize(1)
    assert len(c) == 1
    c.resize(0)
    c.put("k", "d", "", "4")
    assert len(c) == 0
