"""The demo on the real engine (tiny checkpoint) and the ``diffucoder demo`` command's set-up."""

from __future__ import annotations

import argparse

import pytest
from tui_fakes import wait_for

from diffucoder_lsp.cli import build_parser, main
from diffucoder_lsp.commands.demo import build_app
from diffucoder_lsp.engine.sampler import SamplingOptions
from diffucoder_lsp.errors import BadInputError
from diffucoder_lsp.tui import DemoApp, DemoSettings, EngineRunner
from diffucoder_lsp.tui.app import SAMPLE_CODE
from diffucoder_lsp.tui.render import PLACEHOLDER
from diffucoder_lsp.tui.runner import STOP_GLYPH
from diffucoder_lsp.tui.widgets import CodeView, SidePanel

SRC = "def add(a, b):\n    return <|mask|>\n\n\nprint(add(1, 2))\n"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["demo", *argv])


@pytest.mark.parametrize("cache", [False, True])
async def test_real_engine_run_reveals_every_position_once(tiny_ckpt, cache):
    runner = EngineRunner(str(tiny_ckpt), device="cpu", dtype="fp32", cache=cache)
    settings = DemoSettings(SamplingOptions(temperature=0.0), length=5)
    app = DemoApp(runner, SRC, filename="add.py", settings=settings)
    async with app.run_test(size=(100, 28)) as pilot:
        await wait_for(pilot, lambda: app.demo.info is not None, timeout=20, what="model load")
        assert app.demo.info.device == "cpu" and app.demo.info.dtype == "float32"
        await pilot.press("f")
        await wait_for(
            pilot,
            lambda: app.demo.history is not None and app.demo.history.status == "done",
            timeout=30,
            what="fill",
        )
        h = app.demo.history
        assert h.steps_done == 5 == h.total_steps  # one token per step by default
        revealed = [s for s in h.span_steps(5)[0]]
        assert sorted(revealed) == [0, 1, 2, 3, 4]
        lines = app.demo.query_one(CodeView).plain_lines
        assert lines[0] == "def add(a, b):" and lines[-1] == "print(add(1, 2))"
        assert PLACEHOLDER not in "\n".join(lines)
        state = app.demo.query_one(SidePanel).state
        assert state.model == "ckpt" and state.ar[1][0] is not None
        await pilot.press("home")
        assert "".join(app.demo.query_one(CodeView).plain_lines[1:]).count(PLACEHOLDER) == 5


def test_engine_runner_token_text_marks_stop_tokens(tiny_ckpt):
    runner = EngineRunner(str(tiny_ckpt), device="cpu", dtype="fp32")
    info = runner.load()
    assert runner.load() is info  # loads once
    tok = runner._lm.tokenizer
    assert runner.token_text(tok.eos_id) == STOP_GLYPH
    word = tok.encode("return")[0]
    assert runner.token_text(word) == tok.decode([word])


def test_build_app_reads_the_file_and_settings(tmp_path):
    path = tmp_path / "code.py"
    path.write_text("x = <|mask|>\n")
    app = build_app(parse(str(path), "--temperature", "0.7", "--alg", "origin", "--length", "9"))
    assert isinstance(app, DemoApp)
    assert app.source == "x = <|mask|>\n" and app.filename == str(path)
    assert app.settings.options.temperature == 0.7 and app.settings.options.alg == "origin"
    assert app.settings.length == 9
    assert isinstance(app.runner, EngineRunner) and app.runner.model_spec is None


def test_build_app_without_a_file_opens_the_sample():
    app = build_app(parse())
    assert app.source == SAMPLE_CODE and app.filename == "sample.py"
    assert SAMPLE_CODE.count("<|mask|>") == 2


@pytest.mark.parametrize("argv", [["/no/such/file.py"], ["-"]])
def test_demo_bad_input_exits_2(argv, capsys):
    assert main(["demo", *argv]) == 2
    assert "error" in capsys.readouterr().err


def test_build_app_rejects_binary_files(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\0\1\2")
    with pytest.raises(BadInputError):
        build_app(parse(str(path)))


def test_logs_are_held_back_while_the_app_owns_the_terminal(capsys):
    """A warning written to stderr mid-run would draw over the screen: it is replayed after the app exits."""
    import logging
    import sys

    from diffucoder_lsp.commands.demo import terminal_logs_held

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    try:
        with terminal_logs_held():
            assert handler not in root.handlers
            logging.getLogger("diffucoder_lsp.test").warning("model fell back")
            assert "model fell back" not in capsys.readouterr().err
        assert handler in root.handlers
        assert "model fell back" in capsys.readouterr().err
    finally:
        root.removeHandler(handler)


def test_demo_decodes_as_fill_does_by_default_and_plain_on_request():
    """The first fill a visitor waits for uses fill's fast decoding (context cache), in blocks wide enough to
    show the reveal order (the editor's are one position); the textbook full-canvas loop is one flag away."""
    from diffucoder_lsp.commands.demo import DEMO_BLOCK_SIZE
    from diffucoder_lsp.server.settings import Settings

    fast = build_app(parse())
    assert fast.runner.cache is True
    assert fast.settings.options.block_size == DEMO_BLOCK_SIZE > Settings().block_size
    assert build_app(parse("--block-size", "4")).settings.options.block_size == 4
    assert fast.settings.options.tokens_per_step == Settings().tokens_per_step
    plain = build_app(parse("--decoding", "plain"))
    assert plain.runner.cache is False and plain.settings.options.block_size is None
    assert build_app(parse("--no-cache")).runner.cache is False
    with pytest.raises(BadInputError):
        build_app(parse("--exact", "--cache"))


def _capture_stream(monkeypatch, runner, config, settings, text=SRC):
    """Run ``runner.stream`` on a stand-in model with ``config``; returns the keyword arguments that reached
    ``infill_stream``."""
    from types import SimpleNamespace

    import diffucoder_lsp.engine.infill as infill

    seen = {}
    monkeypatch.setattr(infill, "infill_stream", lambda lm, text, **kw: seen.update(kw) or iter(()))
    runner._lm = SimpleNamespace(config=config, model=None)
    runner._info = object()  # loaded
    runner.stream(text, settings)
    return seen


def test_a_learned_lookahead_model_is_decoded_left_to_right_unless_the_user_chose_a_width(monkeypatch):
    """The bundled model reads little past a mask: in the demo's blocks of 8 the sample came out as broken code
    (``a, = b,``). Its default width is the editor's (1); a bidirectional model keeps 8; an explicit
    ``--block-size`` is kept for every model."""
    from types import SimpleNamespace

    eight = DemoSettings(SamplingOptions(temperature=0.0, block_size=8))
    lookahead, full = SimpleNamespace(learned_lookahead=True), SimpleNamespace(learned_lookahead=False)
    auto = EngineRunner(lookahead_block_size=1)
    assert _capture_stream(monkeypatch, auto, lookahead, eight)["options"].block_size == 1
    assert _capture_stream(monkeypatch, auto, full, eight)["options"].block_size == 8
    chosen = EngineRunner(lookahead_block_size=None)
    assert _capture_stream(monkeypatch, chosen, lookahead, eight)["options"].block_size == 8
    exact = DemoSettings(SamplingOptions(temperature=0.0, exact=True))
    assert _capture_stream(monkeypatch, auto, lookahead, exact)["options"].block_size is None


def test_build_app_asks_for_left_to_right_only_when_the_width_is_its_default():
    from diffucoder_lsp.server.settings import Settings

    assert build_app(parse()).runner.lookahead_block_size == Settings().block_size == 1
    assert build_app(parse("--block-size", "8")).runner.lookahead_block_size is None
    assert build_app(parse("--decoding", "plain")).runner.lookahead_block_size is None


def test_the_demo_settles_holes_as_the_editor_cuts_them(monkeypatch):
    """Each hole of the sample gets the language server's test of whether its cut is decided (the other hole
    left as a marker); a fixed length or the reference decoder asks for every position, so no test then."""
    from types import SimpleNamespace

    from diffucoder_lsp.commands.fill import hole_settle_tests

    tests = hole_settle_tests(SAMPLE_CODE)
    assert len(tests) == 2
    assert not tests[0]("        a, b = b, a + b")
    assert tests[0]("        a, b = b, a + b\n    return b\n\ndef fib")  # left the function: cut decided
    assert not tests[1]("text.lower()")
    assert tests[1]("text.lower()\n    return cleaned == cleaned[::-1]\n")  # repeats the next line
    runner = EngineRunner(settle=hole_settle_tests)
    cfg = SimpleNamespace(learned_lookahead=False)
    auto = _capture_stream(
        monkeypatch, runner, cfg, DemoSettings(SamplingOptions(temperature=0.0)), SAMPLE_CODE
    )
    assert len(auto["settle"]) == 2
    fixed = DemoSettings(SamplingOptions(temperature=0.0), length=5)
    assert _capture_stream(monkeypatch, runner, cfg, fixed, SAMPLE_CODE)["settle"] is None


def test_a_settled_hole_stops_the_real_engine_early(tiny_ckpt):
    """The settle tests reach the sampler: a test that is satisfied by any text ends the hole after its first
    written token instead of denoising all of its width."""
    runner = EngineRunner(str(tiny_ckpt), device="cpu", dtype="fp32", settle=lambda text: [lambda w: bool(w)])
    settings = DemoSettings(SamplingOptions(temperature=0.0))
    stream = runner.stream(SRC, settings)
    steps = 0
    try:
        while True:
            next(stream)
            steps += 1
    except StopIteration as stop:
        result = stop.value
    width = DemoSettings().hole_width
    assert 1 <= steps < width and result.steps == steps
