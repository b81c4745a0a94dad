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
