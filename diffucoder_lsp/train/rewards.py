"""Rewards for GRPO: unit tests run in the sandbox, plus a small syntax reward. A reward never raises.

Every completion is executed by :func:`diffucoder_lsp.sandbox.run_python` (own process group, temp dir,
CPU/memory/time limits, environment built from nothing, killed on timeout; :func:`run_many` runs several in
parallel). What a reward program reports, and why it is built the way it is:

- The harness reports on a **duplicate of the original stdout file descriptor**, each line prefixed by a random
  nonce drawn by the trainer, and points ``sys.stdout`` (and fd 1) at ``/dev/null`` before running model code.
  A completion that prints a lot cannot push the results out of the sandbox's output tail, and one that
  prints ``PASS`` lines (or even the marker word) scores nothing, because it does not know the nonce.
- Tests are counted **one by one as they pass** (streamed lines), so a test that hangs or a ``sys.exit`` /
  ``os._exit`` in the middle costs only the tests not yet run; each JSONL test also has its own alarm.
- ``reward = format_weight * syntax_ok + test_weight * passed / total`` (the paper uses 0.5 and 2.0; we default
  to 0.1 and 1.0 so the test share dominates). Any failure - sandbox error, timeout, crash, garbage output -
  gives the syntax part only (0 tests passed) and a ``reason``; training goes on.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import secrets
from dataclasses import dataclass

from ..sandbox import SandboxResult, run_many

log = logging.getLogger(__name__)


@dataclass
class Reward:
    value: float
    passed: int
    total: int
    syntax_ok: bool
    reason: str = ""


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


def new_nonce() -> str:
    return "DCR" + secrets.token_hex(8)


# The JSONL harness: runs the solution, then each test with a per-test alarm; reports on a private fd.
_JSONL_HARNESS = r"""
import os, signal, sys
_NONCE = {nonce!r}
_SRC = {src!r}
_TESTS = {tests!r}
_PER_TEST = {per_test!r}
_fd = os.dup(1)
def _report(*parts):
    os.write(_fd, (" ".join([_NONCE] + [str(p) for p in parts]) + "\n").encode())
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 1)
sys.stdout = open(os.devnull, "w")
class _Alarm(BaseException):
    pass
def _on_alarm(signum, frame):
    raise _Alarm()
signal.signal(signal.SIGALRM, _on_alarm)
_ns = {{"__name__": "__solution__"}}
try:
    signal.setitimer(signal.ITIMER_REAL, _PER_TEST)
    exec(compile(_SRC, "solution.py", "exec"), _ns)
    signal.setitimer(signal.ITIMER_REAL, 0)
except BaseException as e:
    signal.setitimer(signal.ITIMER_REAL, 0)
    _report("LOADFAIL", type(e).__name__)
    _report("DONE", 0, len(_TESTS))
    os._exit(0)
_passed = 0
for _i, _t in enumerate(_TESTS):
    try:
        signal.setitimer(signal.ITIMER_REAL, _PER_TEST)
        exec(compile(_t, "test_%d.py" % _i, "exec"), _ns)
        signal.setitimer(signal.ITIMER_REAL, 0)
        _passed += 1
        _report("PASS", _i)
    except BaseException as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _report("FAIL", _i, type(e).__name__)
_report("DONE", _passed, len(_TESTS))
os._exit(0)
"""

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
_report("DONE")
os._exit(0)
"""


def jsonl_program(solution: str, tests: list[str], nonce: str, per_test_s: float = 5.0) -> str:
    return _JSONL_HARNESS.format(nonce=nonce, src=solution, tests=list(tests), per_test=float(per_test_s))


def pytest_program(test_ids: list[str], nonce: str) -> str:
    return _PYTEST_HARNESS.format(nonce=nonce, ids=list(test_ids))


def count_passes(result: SandboxResult, nonce: str, total: int) -> tuple[int, str]:
    """Tests passed (distinct) according to the nonce lines, and a reason when the run did not finish cleanly."""
    passed: set[str] = set()
    done = False
    for line in result.stdout_tail.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != nonce:
            continue
        if parts[1] == "PASS" and len(parts) >= 3:
            passed.add(" ".join(parts[2:]))
        elif parts[1] == "DONE":
            done = True
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
    """Rewards of full programs (prompt + completion) against assert-style test lists, run in parallel."""
    nonces = [new_nonce() for _ in solutions]
    jobs = []
    for sol, ts, nonce in zip(solutions, tests, nonces, strict=True):
        timeout = per_test_s * (len(ts) + 1) + 2.0
        jobs.append(
            {
                "code": jsonl_program(sol, ts, nonce, per_test_s),
                "timeout_s": timeout,
                "cpu_s": timeout,
                "memory_mb": memory_mb,
            }
        )
    return _collect(solutions, tests, nonces, jobs, workers, test_weight, format_weight)


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
    """Rewards of filled repository files: the relevant tests run by pytest on a temporary copy of the repo."""
    nonces = [new_nonce() for _ in filled_files]
    jobs = [
        {
            "code": pytest_program(ids, nonce),
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


def _collect(codes, tests, nonces, jobs, workers, test_weight, format_weight) -> list[Reward]:
    try:
        results = run_many(jobs, workers=workers)
    except Exception as exc:  # run_many does not raise by contract; this guards the contract itself
        log.warning("reward runs failed: %s", exc)
        results = [None] * len(jobs)
    out = []
    for code, ts, nonce, res in zip(codes, tests, nonces, results, strict=True):
        ok = syntax_ok(code)
        if res is None:
            out.append(
                Reward(score(0, len(ts), ok, test_weight, format_weight), 0, len(ts), ok, "sandbox failure")
            )
            continue
        passed, reason = count_passes(res, nonce, len(ts))
        out.append(
            Reward(score(passed, len(ts), ok, test_weight, format_weight), passed, len(ts), ok, reason)
        )
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
        "failures": json.dumps(reasons) if reasons else "",
    }
