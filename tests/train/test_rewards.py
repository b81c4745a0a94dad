"""GRPO rewards: correct scoring, and hostile completions that must neither fool the reward nor stop training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diffucoder_lsp.sandbox import SandboxResult
from diffucoder_lsp.train.rewards import count_passes, jsonl_rewards, repo_rewards, score, syntax_ok

TOYREPO = Path(__file__).resolve().parent.parent / "fixtures" / "toyrepo"
TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 5"]


def test_score_and_syntax():
    assert score(2, 4, True, 1.0, 0.1) == pytest.approx(0.6)
    assert score(0, 0, False, 2.0, 0.5) == 0.0
    assert syntax_ok("x = 1\n") and not syntax_ok("def f(:\n")


def test_count_passes_needs_the_nonce():
    res = SandboxResult(True, 0, False, "PASS 0\nabc PASS 1\nabc PASS 1\nabc DONE\n", "", 0.1, "ok")
    assert count_passes(res, "abc", 5) == (1, "")  # duplicates count once, lines without the nonce not at all
    cut = SandboxResult(False, None, True, "abc PASS 0\n", "", 1.0, "timeout after 1 s")
    assert count_passes(cut, "abc", 3) == (1, "timeout after 1 s")


@pytest.mark.slow
def test_jsonl_rewards_honest_and_hostile_programs(tmp_path):
    outside = tmp_path / "outside.txt"
    programs = {
        "correct": "def add(a, b):\n    return a + b\n",
        "wrong": "def add(a, b):\n    return a - b\n",
        "syntax": "def add(a, b:\n",
        "hangs_in_tests": "def add(a, b):\n    while True:\n        pass\n",
        "fakes_pass_lines": "import sys\nprint('PASS 0')\nprint('PASS 1')\nsys.stdout.flush()\nsys.exit(0)\n",
        "floods_output": "def add(a, b):\n    print('x' * 200000)\n    return a + b\n",
        "hard_exit": "import os\ndef add(a, b):\n    os._exit(0)\n",
        "writes_outside": f"open({str(outside)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b\n",
        "forks_sleeper": (
            "import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "def add(a, b):\n    return a + b\n"
        ),
        "allocates": "x = bytearray(4 * 1024 ** 3)\ndef add(a, b):\n    return a + b\n",
    }
    names = list(programs)
    rs = jsonl_rewards(
        [programs[n] for n in names],
        [TESTS] * len(names),
        per_test_s=1.0,
        workers=2,
        memory_mb=512,
        test_weight=1.0,
        format_weight=0.1,
    )
    got = dict(zip(names, rs, strict=True))
    assert got["correct"].passed == 2 and got["correct"].value == pytest.approx(2 / 3 + 0.1)
    assert got["wrong"].passed == 1
    assert got["syntax"].passed == 0 and got["syntax"].value == 0.0 and not got["syntax"].syntax_ok
    assert got["hangs_in_tests"].passed == 0 and got["hangs_in_tests"].value == pytest.approx(0.1)
    assert got["fakes_pass_lines"].passed == 0, "printed PASS lines must not count"
    assert got["floods_output"].passed == 2, "a chatty program must not push the results out"
    assert got["hard_exit"].passed == 0
    assert got["writes_outside"].passed == 0 and not outside.exists(), "the write guard refuses the write"
    assert got["forks_sleeper"].passed == 2  # the child is killed with the group afterwards
    assert got["allocates"].passed == 0


@pytest.mark.slow
def test_repo_rewards_run_the_relevant_tests_on_a_copy(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(TOYREPO, repo)
    original = (repo / "toymath" / "ops.py").read_text()
    broken = original.replace("return total / len(values)", "return 0")
    destructive = original + "\nimport shutil, os\nshutil.rmtree(os.getcwd(), ignore_errors=True)\n"
    ids = ["tests/test_ops.py::test_mean", "tests/test_ops.py::test_clamp_inside"]
    rs = repo_rewards(
        [original, broken, destructive, "def clamp(:\n"],
        ["toymath/ops.py"] * 4,
        [str(repo)] * 4,
        [ids] * 4,
        timeout_s=60,
        workers=2,
    )
    assert [r.passed for r in rs[:2]] == [2, 1]
    assert rs[0].value == pytest.approx(1.1) and rs[1].value == pytest.approx(0.6)
    assert rs[3].passed == 0 and rs[3].value == 0.0
    # the user's repository itself is never modified, whatever a completion does in its copy
    assert (repo / "toymath" / "ops.py").read_text() == original
    assert (repo / "tests" / "test_ops.py").is_file()


def test_extract_code_takes_the_last_fenced_block():
    from diffucoder_lsp.train.rewards import extract_code

    answer = "Sure:\n```python\ndef add(a, b):\n    return a - b\n```\nFixed:\n```\ndef add(a, b):\n    return a + b\n```\n"
    assert extract_code(answer) == "def add(a, b):\n    return a + b\n"
    assert extract_code("no code here") == "no code here"
    rs = jsonl_rewards([extract_code(answer), extract_code("no code here")], [TESTS[:2]] * 2, per_test_s=2.0)
    assert (rs[0].passed, rs[0].syntax_ok) == (2, True)
    assert (rs[1].passed, rs[1].syntax_ok) == (0, False)
