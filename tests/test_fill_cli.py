"""The `diffucoder fill` contract: output, --json fields, exit codes 0 / 2 / 1."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from diffucoder_lsp.cli import main

M = "<|mask|>"


def run(argv, capsys, stdin: bytes | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_fill_file_prints_filled_text(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_text(f"def f(x):\n    return {M}\n\nprint(f(1))\n", encoding="utf-8")
    rc, out, err = run(
        ["fill", str(src), "--model", str(tiny_ckpt), "--length", "5", "--temperature", "0"], capsys
    )
    assert rc == 0, err
    assert out.startswith("def f(x):\n    return ") and out.endswith("\n\nprint(f(1))\n")
    assert M not in out


def test_fill_json_from_stdin(tiny_ckpt, capsys, monkeypatch):
    text = f"a = {M}\nb = {M}\n".encode()
    argv = ["fill", "-", "--model", str(tiny_ckpt), "--json", "--length", "3", "--steps", "3", "--exact"]
    rc, out, err = run(argv, capsys, stdin=text, monkeypatch=monkeypatch)
    assert rc == 0, err
    record = json.loads(out)
    assert set(record) >= {"text", "holes", "elapsed_ms"}
    assert len(record["holes"]) == 2
    for hole in record["holes"]:
        assert set(hole) >= {"text", "token_ids", "reveal_step", "confidence"}
        assert len(hole["token_ids"]) == len(hole["reveal_step"]) == len(hole["confidence"]) == 3
        assert all(0 <= s < 3 for s in hole["reveal_step"])
    assert record["text"] == f"a = {record['holes'][0]['text']}\nb = {record['holes'][1]['text']}\n"


def test_seeded_fill_is_deterministic(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "s.py"
    src.write_text(f"x = {M}\n")
    argv = [
        "fill",
        str(src),
        "--model",
        str(tiny_ckpt),
        "--length",
        "6",
        "--temperature",
        "0.8",
        "--seed",
        "5",
    ]
    first = run(argv, capsys)[1]
    second = run(argv, capsys)[1]
    assert first == second


@pytest.mark.parametrize(
    "content,extra,needle",
    [
        (b"no holes here\n", [], "no holes"),
        (b"\x00\x01binary" + M.encode(), [], "binary"),
        (b"\xff\xfe bad utf8 " + M.encode(), [], "UTF-8"),
        (f"x = {M}".encode(), ["--steps", "0"], "steps"),
        (f"x = {M}".encode(), ["--top-p", "2"], "top_p"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_ckpt, tmp_path, capsys, content, extra, needle):
    src = tmp_path / "bad.py"
    src.write_bytes(content)
    rc, out, err = run(["fill", str(src), "--model", str(tiny_ckpt), *extra], capsys)
    assert rc == 2
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("diffucoder:")]
    assert len(lines) == 1 and needle in lines[0]


def test_missing_file_and_broken_checkpoint_exit_2(tmp_path, capsys):
    rc, _, err = run(["fill", str(tmp_path / "missing.py")], capsys)
    assert rc == 2 and "cannot read" in err
    src = tmp_path / "a.py"
    src.write_text(f"x = {M}")
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    rc, _, err = run(["fill", str(src), "--model", str(broken)], capsys)
    assert rc == 2 and "JSON" in err


def test_bad_option_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fill", "-", "--alg", "nope"])
    assert exc.value.code == 2


def test_runtime_failure_exits_1(tiny_ckpt, tmp_path, capsys, monkeypatch):
    import diffucoder_lsp.engine.infill as infill_mod

    def boom(*args, **kwargs):
        raise RuntimeError("simulated backend failure")

    monkeypatch.setattr(infill_mod, "infill", boom)
    src = tmp_path / "a.py"
    src.write_text(f"x = {M}")
    rc, out, err = run(["fill", str(src), "--model", str(tiny_ckpt)], capsys)
    assert rc == 1 and out == "" and "simulated backend failure" in err


def test_console_script_runs_as_subprocess(tiny_ckpt, tmp_path):
    src = tmp_path / "a.py"
    src.write_text(f"y = {M}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffucoder_lsp.cli",
            "fill",
            str(src),
            "--model",
            str(tiny_ckpt),
            "--length",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("y = ") and proc.stdout.endswith("\n")


def test_fast_options_cache_and_threshold(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_text(f"x = {M}\ny = 2\n")
    argv = [
        "fill",
        str(src),
        "--model",
        str(tiny_ckpt),
        "--length",
        "6",
        "--cache",
        "--threshold",
        "0.5",
        "--json",
    ]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    record = json.loads(out)
    assert len(record["holes"][0]["token_ids"]) == 6 and 1 <= record["forward_passes"] <= 6
    rc, _, err = run(["fill", str(src), "--model", str(tiny_ckpt), "--cache", "--exact"], capsys)
    assert rc == 2 and "--exact" in err


def test_block_size_fills_the_holes_block_by_block(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_text(f"x = {M}\ny = {M}\nprint(x, y)\n")
    base = ["fill", str(src), "--model", str(tiny_ckpt), "--length", "6", "--cache", "--json"]
    rc, out, err = run([*base, "--block-size", "4", "--tokens-per-step", "2"], capsys)
    assert rc == 0, err
    record = json.loads(out)
    assert [len(h["token_ids"]) for h in record["holes"]] == [6, 6]
    assert record["forward_passes"] == 6  # blocks of 4, 4, 4: two steps each at 2 tokens per step
    steps = [s for h in record["holes"] for s in h["reveal_step"]]
    # in order: every token of a block is revealed before any token of the next block
    blocks = [steps[i : i + 4] for i in range(0, 12, 4)]
    assert all(max(a) < min(b) for a, b in zip(blocks, blocks[1:], strict=False))
    rc, _, err = run([*base, "--block-size", "0"], capsys)
    assert rc == 2 and "block_size" in err


def test_entropy_bound_adapts_tokens_per_step(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_text(f"x = {M}\ny = {M}\nprint(x, y)\n")
    base = ["fill", str(src), "--model", str(tiny_ckpt), "--length", "6", "--cache", "--json"]
    # a bound no distribution reaches takes every mask at once; a bound of 0 still gives at least one a step
    rc, out, err = run([*base, "--entropy-bound", "1000"], capsys)
    assert rc == 0, err
    assert json.loads(out)["forward_passes"] == 1
    rc, out, err = run([*base, "--entropy-bound", "0", "--tokens-per-step", "3"], capsys)
    assert rc == 0, err
    record = json.loads(out)
    assert [len(h["token_ids"]) for h in record["holes"]] == [6, 6] and 1 <= record["forward_passes"] <= 4
    rc, _, err = run([*base, "--entropy-bound", "0.5", "--threshold", "0.9"], capsys)
    assert rc == 2 and "entropy_bound" in err
    rc, _, err = run([*base, "--entropy-bound", "-1"], capsys)
    assert rc == 2 and "entropy_bound" in err


def test_no_end_early_denoises_every_position_of_an_auto_hole(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_text(f"x = {M}\ny = 2\n")
    base = ["fill", str(src), "--model", str(tiny_ckpt), "--cache", "--tokens-per-step", "4", "--json"]
    rc, out, err = run([*base, "--no-end-early"], capsys)
    assert rc == 0, err
    assert json.loads(out)["forward_passes"] == 12  # 48 auto positions at 4 a step, eos or not
    rc, out, err = run(base, capsys)
    assert rc == 0, err
    assert 1 <= json.loads(out)["forward_passes"] <= 12


def test_auto_holes_are_cut_as_the_editor_cuts_a_completion():
    """``fill`` applies the server's post-processing to auto holes: a model that writes past the end of what
    belongs in the hole still gives the right line (``--raw`` keeps everything)."""
    from diffucoder_lsp.commands.fill import edited_text

    text, shown = edited_text(
        ["def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"], ["a + b\n\ndef add_list(x):\n    return x"]
    )
    assert text == "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n" and shown == ["a + b"]
    # mid-line: one line, and a copy of the rest of the line is not doubled
    text, _ = edited_text(["return os.path.", "(path)\n"], ["exists(path)\nmore = 1"])
    assert text == "return os.path.exists(path)\n"
    # a block that repeats the line after the hole stops before the repeat
    text, _ = edited_text(["if __name__ == ", "\n    main()\n"], ["'__main__':\n    main()\n"])
    assert text == "if __name__ == '__main__':\n    main()\n"
    # a block stops where it leaves the hole's scope, and later holes see the earlier holes' text
    text, shown = edited_text(
        ["def f():\n    a = ", "\n    b = ", "\n    return b\n"], ["1", "a + 1\n\n\ndef g():\n    pass"]
    )
    assert text == "def f():\n    a = 1\n    b = a + 1\n    return b\n" and shown == ["1", "a + 1"]


def test_one_auto_hole_stops_once_its_cut_is_decided(tiny_ckpt, tmp_path, capsys, monkeypatch):
    """One auto hole is asked, as it is written, whether its cut is decided (engine/test_settle.py: it then
    stops); the printed text is what decoding every position gives."""
    from diffucoder_lsp.commands import fill as fill_cmd

    src = tmp_path / "a.py"
    src.write_text(f"def f(x):\n    return {M}\n\nprint(f(1))\n", encoding="utf-8")
    argv = ["fill", str(src), "--model", str(tiny_ckpt), "--json", "--temperature", "0", "--no-end-early"]
    asked: list[str] = []
    real = fill_cmd.settle_tests

    def spy(text, args):
        tests = real(text, args)
        return [lambda w: asked.append(w) or tests[0](w)]

    monkeypatch.setattr(fill_cmd, "settle_tests", spy)
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    settled = json.loads(out)
    monkeypatch.setattr(fill_cmd, "settle_tests", lambda text, args: None)
    rc, out, err = run(argv, capsys)
    whole = json.loads(out)
    assert asked and all(whole["holes"][0]["text"].startswith(w) for w in asked)
    assert settled["text"] == whole["text"]
    assert settled["holes"][0]["shown"] == whole["holes"][0]["shown"]
    assert whole["holes"][0]["text"].startswith(settled["holes"][0]["text"])
    assert settled["steps"] <= whole["steps"]
    # several holes, --raw and the reference decoder decode every position
    from argparse import Namespace

    plain = dict(marker=M, length="auto", raw=False, exact=False)
    assert real(src.read_text(), Namespace(**plain)) is not None
    for change in ({"raw": True}, {"exact": True}, {"length": "8"}):
        assert real(src.read_text(), Namespace(**{**plain, **change})) is None
    assert real(f"a = {M}\nb = {M}\n", Namespace(**plain)) is None
