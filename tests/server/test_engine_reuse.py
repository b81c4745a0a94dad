"""The server's engine keeps one context store per document, so typing reuses context keys/values."""

from __future__ import annotations

import pytest

from diffucoder_lsp.server.engine_client import STORED_STREAMS, EngineClient
from diffucoder_lsp.server.settings import Settings

# long enough (> ContextStore.min_tokens tokens) for reuse to pay
PREFIX = "def add(a, b):\n    return a + b\n\n\n" * 40 + "def fibonacci(n: int) -> int:\n    return fib"
SUFFIX = "\n\n\ndef main():\n    return fibonacci(10)\n"


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    from diffucoder_lsp.model.loading import load_model

    client = EngineClient(ls=None, scheduler=None)
    client.lm = load_model(str(tiny_ckpt), device="cpu", dtype="fp32")  # fp32 stores: the test halves them
    return client


def complete(engine, prefix, settings, stream="file:///a.py"):
    return engine.complete(
        prefix, SUFFIX, settings=settings, max_tokens=6, should_stop=lambda: False, stream=stream
    )


def test_typing_in_a_document_reuses_its_previous_context(engine):
    s = Settings(temperature=0.0)
    complete(engine, PREFIX, s)
    store = engine.store_for("file:///a.py")
    assert store.entry is not None and store.hits == 0
    complete(engine, PREFIX + "on", s)
    assert store.hits == 1 and store.entry.chain == 1
    complete(engine, PREFIX + "on", s, stream="file:///b.py")  # another document starts its own chain
    assert store.hits == 1 and engine.store_for("file:///b.py").entry.chain == 0


def test_reuse_can_be_switched_off(engine):
    s = Settings(temperature=0.0, context_reuse=False)
    complete(engine, PREFIX, s, stream="file:///c.py")
    complete(engine, PREFIX + "on", s, stream="file:///c.py")
    assert engine.store_for("file:///c.py").entry is None


def test_only_the_most_recent_documents_keep_a_store(engine):
    first = engine.store_for("file:///first.py")
    for i in range(STORED_STREAMS):
        engine.store_for(f"file:///other{i}.py")
    assert engine.store_for("file:///first.py") is not first
    assert len(engine._stores) == STORED_STREAMS


def test_stores_are_dropped_beyond_their_byte_budget_but_never_the_current_one(engine, monkeypatch):
    """A large model's keys/values (26 MB a canvas for the bundled model) fill the budget before the count."""
    import torch

    from diffucoder_lsp.engine.reuse import StoredContext
    from diffucoder_lsp.server import engine_client

    monkeypatch.setattr(engine_client, "STORED_BYTES", 1000)
    engine._stores.clear()  # the engine is shared by this module's tests
    big = [(torch.zeros(200), torch.zeros(200))]  # 1600 bytes; 800 once compacted (another document's)
    for name in ("a", "b"):
        engine.store_for(f"file:///{name}.py").entry = StoredContext([1], big, 0)
    assert list(engine._stores) == ["file:///a.py", "file:///b.py"]  # 800 bytes besides b: within
    assert engine._stores["file:///a.py"].nbytes == 800 and engine._stores["file:///b.py"].nbytes == 1600
    current = engine.store_for("file:///c.py")
    assert list(engine._stores) == ["file:///b.py", "file:///c.py"]  # a + b = 1600 > 1000: a goes
    current.entry = StoredContext([1], big * 3, 0)  # the current document alone may exceed the budget
    assert engine.store_for("file:///c.py") is current and engine.store_for("file:///c.py").nbytes == 4800
    engine.store_for("file:///d.py")  # once another document is current, c alone is over the budget
    assert list(engine._stores) == ["file:///d.py"]


def test_completions_end_early_unless_switched_off(engine, monkeypatch):
    from diffucoder_lsp.engine import infill as infill_module

    seen = []
    real = infill_module.infill_stream

    def spy(*args, **kwargs):
        seen.append(kwargs.get("end_early"))
        return real(*args, **kwargs)

    monkeypatch.setattr(infill_module, "infill_stream", spy)
    complete(engine, PREFIX, Settings(temperature=0.0), stream="file:///e.py")
    complete(engine, PREFIX, Settings(temperature=0.0, end_early=False), stream="file:///e.py")
    assert seen == [True, False]


def test_warming_fills_the_store_the_next_completion_starts_from(engine):
    s = Settings(temperature=0.0)
    uri = "file:///w.py"
    args = dict(settings=s, max_tokens=6, should_stop=lambda: False, stream=uri)
    assert engine.warm(PREFIX, SUFFIX, **args)
    store = engine.store_for(uri)
    assert store.entry.chain == 0 and store.hits == 0
    warm = complete(engine, PREFIX, s, stream=uri)
    assert store.hits == 1 and store.entry.chain == 1  # the completion started from the warmed context
    cold = complete(engine, PREFIX, Settings(temperature=0.0, context_reuse=False), stream="file:///cold.py")
    assert warm.texts == cold.texts  # the guess was exact: the same fill as without warming

    # cursor unknown (max_tokens 0): a document that fits the window is warmed whole, a larger one is not
    whole, roomy = "file:///whole.py", Settings(temperature=0.0, context_tokens=2048)
    assert engine.warm("", PREFIX + SUFFIX, **{**args, "max_tokens": 0, "stream": whole, "settings": roomy})
    complete(engine, PREFIX, roomy, stream=whole)
    assert engine.store_for(whole).hits == 1
    big = "x = 1\n" * 3000
    assert not engine.warm("", big, **{**args, "max_tokens": 0, "stream": "file:///big.py"})
    assert engine.store_for("file:///big.py").entry is None
    # stopped on request: nothing is stored
    assert not engine.warm(PREFIX, SUFFIX, **{**args, "should_stop": lambda: True, "stream": "file:///s.py"})
    assert engine.store_for("file:///s.py").entry is None


def test_other_documents_stores_are_held_in_bf16_and_still_serve_their_document(engine):
    """When another document is completed, a document's stored keys/values are compacted to bf16 (half the
    memory); coming back, the request reuses them in the model's dtype, with what an uncompacted store gives."""
    import torch

    s = Settings(temperature=0.0)
    engine._stores.clear()
    complete(engine, PREFIX, s, stream="file:///x.py")
    store = engine.store_for("file:///x.py")
    fp32 = store.nbytes
    x_kvs = [(k.clone(), v.clone()) for k, v in store.entry.kvs]
    complete(engine, PREFIX, s, stream="file:///y.py")
    assert store.entry.kvs[0][0].dtype == torch.bfloat16 and store.nbytes == fp32 // 2
    assert engine.store_for("file:///y.py").entry.kvs[0][0].dtype == torch.float32  # the current one
    for (k, v), (k0, v0) in zip(store.entry.kvs, x_kvs, strict=True):
        torch.testing.assert_close(k.float(), k0, atol=0.05, rtol=0.02)
        torch.testing.assert_close(v.float(), v0, atol=0.05, rtol=0.02)
    first = complete(engine, PREFIX + "on", s, stream="file:///x.py")
    assert store.hits == 1  # served from the compacted entry
    assert store.entry.kvs[0][0].dtype == torch.float32  # the new entry, saved by that request
    complete(engine, PREFIX, s, stream="file:///x2.py")  # the same history without the compaction
    uncompacted = complete(engine, PREFIX + "on", s, stream="file:///x2.py")
    assert engine.store_for("file:///x2.py").hits == 1
    assert first.texts == uncompacted.texts
