"""Rewards for GRPO: unit tests run in the sandbox, plus a small syntax reward. A reward never raises.

Every completion is executed by :func:`diffucoder_lsp.sandbox.run_python` (own namespaces, temp dir,
CPU/memory/time limits, environment built from nothing, killed on timeout; :func:`run_many` runs several in
parallel). A policy trained against a reward learns whatever raises it, attacks on the harness included, so:

- **JSONL tests are judged by value** (:mod:`diffucoder_lsp.judge`): for ``assert add(1, 2) == 3`` the sandbox
  only computes ``add(1, 2)`` and reports the value; the trainer compares it with ``3``. Code that takes over
  its process (walks the harness's frames for its reporter, ``os._exit(0)``, ``raise SystemExit(0)``, patches
  ``AssertionError``, returns objects whose ``__eq__`` lies) gets no test it did not compute. A test that does
  not split (setup statements, test-side values the trainer cannot compute) runs in-process as before and
  reports a nonce line; that verdict is forgeable and counted in :attr:`Reward.forgeable`.
- **Repository tests** run under pytest in the sandbox's process, reporting on a private duplicate of stdout,
  each line prefixed by a random nonce, with fd 1 and 2 pointed at ``/dev/null``: printed ``PASS`` lines score
  nothing, but code that reads the harness's frame can report every test passed. All their verdicts are
  forgeable (``Reward.forgeable == total``, ``forgeable`` in :func:`reward_summary`). They run with the
  repository's import roots first on ``sys.path`` (:func:`repo_layout.repo_layout`), as when the tasks were
  found; a run whose tests imported one of the repository's packages from elsewhere (an installed copy) tested
  something else than the filled file and scores no test.
- Tests are counted **one by one** (and each has its own alarm), so a test that hangs or a ``sys.exit`` /
  ``os._exit`` in the middle costs only the tests not yet judged.
- ``reward = format_weight * syntax_ok + test_weight * passed / total`` (the paper uses 0.5 and 2.0; we default
  to 0.1 and 1.0 so the test share dominates). Any failure - sandbox error, timeout, crash, garbage output -
  gives the syntax part only (0 tests passed) and a ``reason``; training goes on.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass

from ..judge import RESULTS, Plan, new_nonce, plan_asserts, program, verdicts
from ..sandbox import SandboxResult, run_many

log = logging.getLogger(__name__)


@dataclass
class Reward:
    value: float
    passed: int
    total: int
    syntax_ok: bool
    reason: str = ""
    forgeable: int = 0  # how many of the tests were judged in the program's own process (see the module doc)


def syntax_ok(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(answer: str) -> str:
    """The code of an Instruct model's answer: its last fenced code block, or the whole answer when there is none
    (which then usually fails to parse and earns no format reward)."""
    blocks = _FENCE.findall(answer)
    return blocks[-1] if blocks else answer


# The repository harness: pytest on the relevant test ids, outcomes reported on a private fd.
_PYTEST_HARNESS = r"""
import os, sys
_NONCE = {nonce!r}
_IDS = {ids!r}
_fd = os.dup(1)
def _report(*parts):
    os.write(_fd, (" ".join([_NONCE] + [str(p) for p in parts]) + "\n").encode())
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 1)
os.dup2(_null, 2)
def _outside():
    return {{}}
{layout}
import pytest
class _Count:
    def __init__(self):
        self.failed = set()
    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.add(report.nodeid)
        elif report.when == "call" and report.passed and report.nodeid not in self.failed:
            _report("PASS", report.nodeid)
_c = _Count()
try:
    pytest.main(["-q", "-p", "no:cacheprovider", *_IDS], plugins=[_c])
except BaseException as e:
    _report("ERROR", type(e).__name__)
for _name, _where in _outside().items():
    _report("OUTSIDE", _name, _where)
_report("DONE")
os._exit(0)
"""


def pytest_program(test_ids: list[str], nonce: str, layout: str = "") -> str:
    """The harness running ``test_ids``; ``layout``: :func:`repo_layout.layout_code` of the repository (its
    import roots first on ``sys.path``, and the check of where its packages were imported from)."""
    return _PYTEST_HARNESS.format(nonce=nonce, ids=list(test_ids), layout=layout)


def count_passes(result: SandboxResult, nonce: str, total: int) -> tuple[int, str]:
    """Tests passed (distinct) according to the nonce lines, and a reason when the run did not finish cleanly."""
    passed: set[str] = set()
    done = False
    outside = ""
    for line in result.stdout_tail.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != nonce:
            continue
        if parts[1] == "PASS" and len(parts) >= 3:
            passed.add(" ".join(parts[2:]))
        elif parts[1] == "DONE":
            done = True
        elif parts[1] == "OUTSIDE" and len(parts) >= 4 and not outside:
            outside = f"tests imported {parts[2]} from outside the repository ({' '.join(parts[3:])})"
    if outside:  # the tests ran another copy of the package: the filled file was not what passed
        return 0, outside
    n = min(len(passed), total)
    if done:
        return n, ""
    return n, result.reason if not result.passed else "no result line (output lost)"


def score(passed: int, total: int, code_ok: bool, test_weight: float, format_weight: float) -> float:
    share = passed / total if total else 0.0
    return test_weight * share + format_weight * float(code_ok)


def jsonl_rewards(
    solutions: list[str],
    tests: list[list[str]],
    *,
    workers: int = 2,
    per_test_s: float = 5.0,
    memory_mb: int | None = 512,
    test_weight: float = 1.0,
    format_weight: float = 0.1,
) -> list[Reward]:
    """Rewards of full programs (prompt + completion) against assert-style test lists, run in parallel.

    Each test string is judged by value when it splits (see the module docstring), else in-process."""
    plans: dict[tuple[str, ...], Plan] = {}
    nonces = [new_nonce() for _ in solutions]
    jobs, job_plans = [], []
    for sol, ts, nonce in zip(solutions, tests, nonces, strict=True):
        key = tuple(ts)
        if key not in plans:
            plans[key] = plan_asserts(key)
        plan = plans[key]
        job_plans.append(plan)
        probes = len(plan.probes) + sum(t.code is not None for t in plan.tests)
        timeout = per_test_s * (probes + 1) + 2.0
        jobs.append(
            {
                "code": program(sol, plan, nonce=nonce, per_test_s=per_test_s, quiet=True),
                "timeout_s": timeout,
                "cpu_s": timeout,
                "memory_mb": memory_mb,
                "read_back": [RESULTS],
            }
        )
    results = _run_all(jobs, workers)
    out = []
    for sol, ts, nonce, plan, res in zip(solutions, tests, nonces, job_plans, results, strict=True):
        ok = syntax_ok(sol)
        forgeable = sum(t.forgeable for t in plan.tests)
        if res is None:
            out.append(_failed_reward(len(ts), ok, test_weight, format_weight, forgeable))
            continue
        vs = verdicts(plan, res, nonce)
        passed = sum(v.passed for v in vs)
        reason = next((v.reason for v in vs if not v.passed), "")
        value = score(passed, len(ts), ok, test_weight, format_weight)
        out.append(Reward(value, passed, len(ts), ok, reason, forgeable))
    return out


def repo_rewards(
    filled_files: list[str],
    rel_path: list[str],
    repo_root: list[str],
    test_ids: list[list[str]],
    *,
    workers: int = 2,
    timeout_s: float = 30.0,
    memory_mb: int | None = 1024,
    test_weight: float = 1.0,
    format_weight: float = 0.1,
) -> list[Reward]:
    """Rewards of filled repository files: the relevant tests run by pytest on a temporary copy of the repo,
    with its import roots first on ``sys.path``."""
    from .repo_layout import cached_layout, layout_code

    nonces = [new_nonce() for _ in filled_files]
    jobs = [
        {
            "code": pytest_program(ids, nonce, layout_code(cached_layout(str(root)))),
            "files": {rel: text},
            "cwd_copy": root,
            "timeout_s": timeout_s,
            "memory_mb": memory_mb,
        }
        for text, rel, root, ids, nonce in zip(
            filled_files, rel_path, repo_root, test_ids, nonces, strict=True
        )
    ]
    return _collect(filled_files, test_ids, nonces, jobs, workers, test_weight, format_weight)


def _run_all(jobs: list[dict], workers: int) -> list[SandboxResult | None]:
    try:
        return run_many(jobs, workers=workers)
    except Exception as exc:  # run_many does not raise by contract; this guards the contract itself
        log.warning("reward runs failed: %s", exc)
        return [None] * len(jobs)


def _failed_reward(total: int, ok: bool, test_weight: float, format_weight: float, forgeable: int) -> Reward:
    return Reward(score(0, total, ok, test_weight, format_weight), 0, total, ok, "sandbox failure", forgeable)


def _collect(codes, tests, nonces, jobs, workers, test_weight, format_weight) -> list[Reward]:
    """Repository rewards: counted from the pytest harness's nonce lines, every verdict forgeable."""
    results = _run_all(jobs, workers)
    out = []
    for code, ts, nonce, res in zip(codes, tests, nonces, results, strict=True):
        ok = syntax_ok(code)
        if res is None:
            out.append(_failed_reward(len(ts), ok, test_weight, format_weight, len(ts)))
            continue
        passed, reason = count_passes(res, nonce, len(ts))
        value = score(passed, len(ts), ok, test_weight, format_weight)
        out.append(Reward(value, passed, len(ts), ok, reason, forgeable=len(ts)))
    return out


def reward_summary(rewards: list[Reward]) -> dict:
    n = max(1, len(rewards))
    reasons: dict[str, int] = {}
    for r in rewards:
        if r.reason:
            key = r.reason[:60]
            reasons[key] = reasons.get(key, 0) + 1
    return {
        "reward": sum(r.value for r in rewards) / n,
        "tests_passed": sum(r.passed for r in rewards) / max(1, sum(r.total for r in rewards)),
        "syntax_ok": sum(r.syntax_ok for r in rewards) / n,
        # the share of tests whose verdict the code under test could have forged (repo tests, unsplit asserts)
        "forgeable": sum(r.forgeable for r in rewards) / max(1, sum(r.total for r in rewards)),
        "failures": json.dumps(reasons) if reasons else "",
    }
