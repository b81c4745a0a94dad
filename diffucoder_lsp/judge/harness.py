"""The sandbox program that computes a plan's probes, and the caller's verdicts from what it reported.

The program (:func:`program`) runs the solution, then evaluates each probe on its own and appends its value
as one JSON line to ``judge-results.jsonl`` in the run's folder, which the sandbox hands back
(``read_back``); then it runs the code of tests that could not be split, each reporting a line with a random
nonce when it completes. It writes nothing else that counts: its exit status is not read.

:func:`verdicts` reads that file and judges each test:

- a **check** passes when the value of every probe its template needs was reported exactly once (a probe
  reported twice, say by the program and then by the harness, counts as not reported) and the template,
  evaluated here with the expected values only the caller has, is true. Nothing the program does in its own
  process changes the expected values or the comparison: exiting early, raising ``SystemExit``, walking the
  harness's frames, patching ``AssertionError`` or builtins, or returning objects whose ``__eq__`` lies, all
  leave it without a value that compares equal unless it computed one.
- a test's **code** passes when its nonce line is there. The nonce is in the same process as the code under
  test, so that verdict can be forged (``sys._getframe(1).f_globals["_NONCE"]``); such tests are marked
  :attr:`Verdict.forgeable`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from ..sandbox import SandboxResult
from .split import Plan
from .values import ENCODER, Outcome, decode, evaluate, parse_line

RESULTS = "judge-results.jsonl"

_HARNESS = r"""
import builtins as _builtins, json as _json, os as _os, signal as _signal, sys as _sys
_SRC = {src!r}
_SETUP = {setup!r}
_BIND = {bind!r}
_PROBES = {probes!r}
_CODE = {code!r}
_NONCE = {nonce!r}
_PER = {per!r}
_QUIET = {quiet!r}
_out = _os.open({results!r}, _os.O_WRONLY | _os.O_CREAT | _os.O_APPEND, 0o600)
_dumps, _write = _json.dumps, _os.write
def _put(obj):
    _write(_out, (_dumps(obj) + "\n").encode())
{encoder}
class _Alarm(BaseException):
    pass
def _on_alarm(signum, frame):
    raise _Alarm("time limit")
if _PER:
    _signal.signal(_signal.SIGALRM, _on_alarm)
def _arm(on):
    if _PER:
        _signal.setitimer(_signal.ITIMER_REAL, _PER if on else 0)
if _QUIET:
    _null = _os.open(_os.devnull, _os.O_WRONLY)
    _os.dup2(_null, 1)
    _sys.stdout = open(_os.devnull, "w")
_ns = {{"__name__": "__main__", "__builtins__": _builtins}}
try:
    _arm(True)
    exec(compile(_SRC, "solution.py", "exec"), _ns)
    _arm(False)
except BaseException as _e:
    _arm(False)
    _put({{"load": _type(_e).__name__}})
    _os._exit(0)
_pns = dict(_ns)
for _name, _target in _BIND:
    if _target in _ns:
        _pns[_name] = _ns[_target]
for _s in _SETUP:
    try:
        exec(_s, _pns)
    except BaseException:
        pass
for _i, _p in enumerate(_PROBES):
    try:
        _arm(True)
        _v = eval(compile(_p, "probe_%d" % _i, "eval"), _pns)
        _arm(False)
        _put({{"p": _i, "v": _enc(_v)}})
    except BaseException as _e:
        _arm(False)
        try:
            _put({{"p": _i, "e": _type(_e).__name__}})
        except BaseException:
            pass
for _j, _c in _CODE:
    try:
        _arm(True)
        exec(compile(_c, "test_%d.py" % _j, "exec"), _ns)
        _arm(False)
        _put({{"t": _j, "n": _NONCE}})
    except BaseException as _e:
        _arm(False)
        _put({{"t": _j, "e": _type(_e).__name__}})
_os._exit(0)
"""


@dataclass(frozen=True)
class Verdict:
    """One test's result. ``forgeable``: code under test could have written it (``judged_by`` is not values)."""

    passed: bool
    forgeable: bool
    judged_by: str
    reason: str = ""


def new_nonce() -> str:
    return "DCR" + secrets.token_hex(8)


def program(
    solution: str, plan: Plan, *, nonce: str, per_test_s: float | None = None, quiet: bool = False
) -> str:
    """The sandbox program for ``solution`` under ``plan``. ``per_test_s``: an alarm for the solution's load, each
    probe and each test's code; ``quiet``: the program's stdout goes to ``/dev/null``."""
    code = [(j, t.code) for j, t in enumerate(plan.tests) if t.code is not None]
    return _HARNESS.format(
        src=solution,
        setup=list(plan.setup),
        bind=[list(b) for b in plan.bind],
        probes=list(plan.probes),
        code=code,
        nonce=nonce,
        per=float(per_test_s) if per_test_s else None,
        quiet=bool(quiet),
        results=RESULTS,
        encoder=ENCODER,
    )


@dataclass
class Report:
    """What the results file says: probe outcomes, tests whose code completed, errors, a failed load."""

    outcomes: dict[int, Outcome]
    completed: set[int]
    errors: dict[int, str]
    load_error: str = ""


def read_report(text: str, nonce: str) -> Report:
    """Parse the results file. Lines that are not ours are skipped; a probe reported twice has no value."""
    report = Report({}, set(), {})
    seen: set[int] = set()
    for line in text.splitlines():
        obj = parse_line(line)
        if obj is None:
            continue
        if "p" in obj and type(obj["p"]) is int:
            i = obj["p"]
            if i in seen:
                report.outcomes[i] = (False, "value reported more than once")
                continue
            seen.add(i)
            if "v" in obj:
                try:
                    report.outcomes[i] = (True, decode(obj["v"]))
                except Exception:  # unhashable set members, bad tags, deep nesting
                    report.outcomes[i] = (False, "value not readable")
            else:
                report.outcomes[i] = (False, f"raised {str(obj.get('e'))[:60]}")
        elif "t" in obj and type(obj["t"]) is int:
            if obj.get("n") == nonce:
                report.completed.add(obj["t"])
            elif "e" in obj:
                report.errors.setdefault(obj["t"], f"raised {str(obj['e'])[:60]}")
        elif "load" in obj and not report.load_error:
            report.load_error = f"the solution raised {str(obj['load'])[:60]} when loaded"
    return report


def verdicts(plan: Plan, result: SandboxResult, nonce: str) -> list[Verdict]:
    """One verdict per test of ``plan``, from the run's results file (never from its exit status)."""
    if RESULTS not in result.read_back and result.returncode is None and not result.timed_out:
        # the program never ran (no sandbox here, a sandbox error): its reason is the whole story
        return [Verdict(False, t.forgeable, t.judged_by, result.reason[:300]) for t in plan.tests]
    report = read_report(result.read_back.get(RESULTS, ""), nonce)
    # why values may be missing: the solution did not load, the run was stopped, or it ended early
    stopped = report.load_error or (result.reason if not result.passed else "") or "the program ended first"
    outcomes = {
        i: report.outcomes.get(i, (False, f"no value reported ({stopped})")) for i in range(len(plan.probes))
    }
    out = []
    for j, test in enumerate(plan.tests):
        passed, reason = True, ""
        for check in test.checks:
            passed, reason = evaluate(check, outcomes)
            if not passed:
                break
        if passed and test.code is not None and j not in report.completed:
            passed, reason = False, report.errors.get(j) or f"the test did not complete ({stopped})"
        out.append(Verdict(passed, test.forgeable, test.judged_by, reason[:300]))
    return out
