"""Judge model-written code by values the caller compares, not by what the code's own process says.

In-process evaluation of untrusted code can always be subverted: the harness, its nonce and ``AssertionError``
all live in the process the code under test controls, and a process's exit status is whatever it chooses. So
for tests of the form ``assert CALL == EXPECTED`` (HumanEval, MBPP, most unit-test asserts) the sandbox only
computes ``CALL`` and reports its value as plain data; the caller decodes it and compares it with ``EXPECTED``
itself. The expected values and the comparison never enter the sandbox.

- :mod:`.split`: which asserts split, into probes (sent) and templates (kept); :func:`plan_check` for a
  HumanEval-style ``check(candidate)`` module, :func:`plan_asserts` for a list of assert strings (GRPO).
- :mod:`.values`: the plain-data encoding of reported values, and the caller's evaluator of templates.
- :mod:`.harness`: the sandbox program, and the verdicts read from its results file.

Tests that do not split run in-process as before and their verdicts are marked ``forgeable``
(:attr:`Verdict.forgeable`, :attr:`TestPlan.judged_by`): ``values`` (not forgeable), ``mixed`` or
``in-process``. This package is below ``eval`` and ``train`` (rank 0, next to the sandbox), so both judge the
same way.
"""

from __future__ import annotations

from ..sandbox import SandboxResult, run_python
from .harness import RESULTS, Verdict, new_nonce, program, read_report, verdicts
from .split import Check, Plan, TestPlan, plan_asserts, plan_check

__all__ = [
    "RESULTS",
    "Check",
    "Plan",
    "TestPlan",
    "Verdict",
    "judge_run",
    "new_nonce",
    "plan_asserts",
    "plan_check",
    "program",
    "read_report",
    "verdicts",
]


def judge_run(
    solution: str, plan: Plan, *, per_test_s: float | None = None, quiet: bool = False, **run_kwargs
) -> tuple[list[Verdict], SandboxResult]:
    """Run ``solution`` under ``plan`` in the sandbox (``run_kwargs`` go to :func:`run_python`) and judge it."""
    nonce = new_nonce()
    code = program(solution, plan, nonce=nonce, per_test_s=per_test_s, quiet=quiet)
    result = run_python(code, read_back=[RESULTS], **run_kwargs)
    return verdicts(plan, result, nonce), result
