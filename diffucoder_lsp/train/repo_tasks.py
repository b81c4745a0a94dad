"""GRPO tasks: from a ``{"prompt", "tests"}`` JSONL, and from a repository's own test suite.

**JSONL** (AceCoder style): ``prompt`` is the start of a program (signature + docstring), ``tests`` a list of
assert statements (or one string of them). The hole is appended after the prompt; the reward runs
``prompt + completion`` against the tests.

**Repository**: a function is a task when the test suite exercises it. Which tests exercise which function is
found by *running* the tests, not by matching names: a pytest plugin (run in the sandbox on a temporary copy,
one test file per sandbox run so each report stays small) records, with ``sys.setprofile``, every candidate
function called during each test's call phase. Only tests that **pass on the original code** are kept as
relevant (a test that already fails gives no signal), and only functions with at least one relevant test become
tasks. The task masks the function's body after its signature and docstring (as SFT's function holes); the
reward is the share of its relevant tests that pass with the filled body, plus the syntax reward.

**Import roots**: the tests (tracing and rewards) run with the repository's own copy of its packages first on
``sys.path`` and ``PYTHONPATH``: the folders ``pyproject.toml`` (or ``setup.cfg``) declares, then ``src/`` when it
holds Python files, then the root (:func:`repo_layout`; ``setup.py`` is never executed). The sandbox mounts the
project's site-packages for the tests' dependencies, so without this a ``src/`` layout's tests imported an
installed copy of the same package (on pallets/click: 0 tasks, every call went to site-packages). Each run also
checks where the packages the roots define were imported from, and a test file that got one from elsewhere is
reported (:attr:`TraceResult.outside`).

When no task is found, :class:`NoTasksError` says why in one line: how many candidate functions, traced tests,
passing tests and passing tests that call a candidate there were, which test files failed to run (with the
reason: a timeout, a pytest usage error) or to collect (with the first error, e.g. a missing dependency), and
which packages were imported from outside the repository.

The report is compressed (zlib + base64) on a nonce line, the same private-fd scheme as the rewards.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError
from ..sandbox import run_many
from .repo_data import (
    CHATML,
    body_after_docstring,
    function_bodies,
    line_starts,
    list_repo_files,
    load_repo,
)
from .repo_layout import Layout, is_test_file, layout_code, repo_layout
from .rewards import new_nonce

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One GRPO prompt: fill the hole between ``prefix`` and ``suffix``; the reward is computed by ``kind``."""

    task_id: str
    kind: str  # "jsonl" | "repo" | "custom"
    prefix: str
    suffix: str = ""
    tests: list[str] = field(default_factory=list)  # asserts (jsonl) or pytest node ids (repo)
    rel_path: str = ""  # repo: the file to rewrite
    repo_root: str = ""
    truth: str = ""  # the original body (repo tasks), for reference only
    hole_tokens: int | None = None  # a per-task hole length; None uses the run's completion length
    chat: bool = False  # jsonl: ChatML prompt, the reward runs the answer's code block
    name: str = ""  # repo: the function's qualified name (``Class.method``, ``outer.<locals>.inner``)


def read_jsonl_tasks(path: str | Path, chat: bool = False) -> list[Task]:
    """Tasks of a JSONL file. ``chat``: the prompt is a question for an Instruct model, wrapped in ChatML; the
    reward then runs the code block of the answer (see :func:`rewards.extract_code`), not prompt + answer.

    A line that is not a task raises :class:`BadInputError` naming the file and the line number."""
    tasks = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInputError(f"cannot read tasks {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BadInputError(
            f"cannot read tasks {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise BadInputError(f"{path}:{n}: not JSON: {exc}") from exc
        tests = row.get("tests") if isinstance(row, dict) else None
        if isinstance(tests, str):
            tests = [tests]
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("prompt"), str)
            or not isinstance(tests, list)
            or not tests
            or not all(isinstance(t, str) and t.strip() for t in tests)
        ):
            raise BadInputError(
                f'{path}:{n}: needs {{"prompt": string, "tests": non-empty list of assert strings}}'
            )
        prompt = CHATML.format(query=row["prompt"]) if chat else row["prompt"]
        task_id = str(row.get("id", f"jsonl/{n}"))
        tasks.append(Task(task_id, "jsonl", prompt, "", list(tests), chat=chat))
    if not tasks:
        raise BadInputError(f"{path}: no tasks (the file has no JSON lines)")
    return tasks


# ------------------------------------------------------------------------------------------------- repo


# ------------------------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    rel_path: str
    name: str
    lines: list[int]  # the def line and its first decorator's line (co_firstlineno is either)
    body: tuple[int, int]  # character span of the body
    qualname: str = ""  # Class.method, outer.<locals>.inner


def _functions(tree: ast.AST):
    """(function node, qualified name) of every function, as ``__qualname__`` spells it."""
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = prefix + child.name
                yield child, qual
                stack.append((child, qual + ".<locals>."))
            elif isinstance(child, ast.ClassDef):
                stack.append((child, prefix + child.name + "."))
            else:
                stack.append((child, prefix))


def candidates(files) -> list[Candidate]:
    out = []
    for f in files:
        if not f.path.endswith(".py") or is_test_file(f.path):
            continue
        try:
            tree = ast.parse(f.text)
        except (SyntaxError, ValueError):
            continue
        spans = {}
        for a, b in function_bodies(f.text):
            spans[a] = (a, b)
        starts = line_starts(f.text)
        found = []
        for node, qual in _functions(tree):
            body = body_after_docstring(node)
            if not body:
                continue
            a = starts[body[0].lineno - 1]
            if a not in spans:
                continue
            lines = [node.lineno] + [d.lineno for d in node.decorator_list]
            found.append(Candidate(f.path, node.name, sorted(set(lines)), spans[a], qual))
        out.extend(sorted(found, key=lambda c: c.lines[0]))
    return out


_TRACE_HARNESS = r"""
import base64, json, os, sys, zlib
_NONCE = {nonce!r}
_CANDS = {cands!r}
_FILE = {test_file!r}
_fd = os.dup(1)
_LOG = os.path.abspath(".diffucoder-trace.log")
_null = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.dup2(_null, 1)
os.dup2(_null, 2)
def _send(_obj):
    _data = base64.b64encode(zlib.compress(json.dumps(_obj).encode())).decode()
    os.write(_fd, (_NONCE + " " + _data + "\n").encode())
    os._exit(0)
{layout}
_index = {{}}
for _i, (_rel, _lines) in enumerate(_CANDS):
    for _ln in _lines:
        _index[(os.path.realpath(_rel), _ln)] = _i
try:
    import pytest
except BaseException as _e:
    _send({{"error": "cannot import pytest: %s: %s" % (type(_e).__name__, _e)}})
def _last_line(_text):
    _lines = [_l.strip() for _l in str(_text).splitlines() if _l.strip()]
    _l = _lines[-1] if _lines else ""
    return (_l[1:].strip() if _l.startswith("E ") else _l)[:200]
class _Trace:
    def __init__(self):
        self.calls = {{}}
        self.ok = {{}}
        self.collect_errors = []
        self._cur = None
    def _prof(self, frame, event, arg):
        if event == "call":
            i = _index.get((os.path.realpath(frame.f_code.co_filename), frame.f_code.co_firstlineno))
            if i is not None:
                self._cur.add(i)
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        self._cur = self.calls.setdefault(item.nodeid, set())
        sys.setprofile(self._prof)
        try:
            yield
        finally:
            sys.setprofile(None)
    def pytest_runtest_logreport(self, report):
        prev = self.ok.get(report.nodeid, True)
        if report.when == "call":
            self.ok[report.nodeid] = prev and report.passed
        elif report.failed:
            self.ok[report.nodeid] = False
    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append(_last_line(getattr(report, "longreprtext", "")) or "collection failed")
_t = _Trace()
_error = ""
try:
    _rc = int(pytest.main(["-q", "-p", "no:cacheprovider", _FILE], plugins=[_t]))
except BaseException as _e:
    _rc, _error = -1, "%s: %s" % (type(_e).__name__, _e)
if _rc in (2, 3, 4) and not _t.collect_errors:  # interrupted, internal or usage error (addopts, plugins)
    try:
        with open(_LOG, "rb") as _f:
            _f.seek(max(0, os.path.getsize(_LOG) - 4096))
            _tail = _f.read().decode("utf-8", "replace").splitlines()
        _errs = [_l for _l in _tail if "error" in _l.lower()]
        _error = _last_line(_errs[-1] if _errs else "\n".join(_tail))
    except OSError:
        pass
    _error = "pytest exit code %d: %s" % (_rc, _error or "no message")
_send({{
    "tests": {{k: [bool(_t.ok.get(k)), sorted(v)] for k, v in _t.calls.items()}},
    "collect_errors": _t.collect_errors,
    "outside": _outside(),
    "error": _error,
}})
"""


@dataclass
class TraceResult:
    """What tracing the test files found."""

    tests: dict[str, tuple[bool, list[int]]] = field(default_factory=dict)  # node id -> (passed, candidates)
    no_report: dict[str, str] = field(
        default_factory=dict
    )  # test file -> why its run failed (or reported nothing)
    collect_errors: dict[str, str] = field(default_factory=dict)  # test file -> its first collection error
    # package imported from outside the repository -> (where from, the test files that did)
    outside: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


def trace_tests(
    root: str | Path,
    cands: list[Candidate],
    test_files: list[str],
    workers: int = 2,
    timeout_s: float = 120.0,
    layout: Layout | None = None,
) -> TraceResult:
    """Which candidates each test calls and whether it passes, one sandbox run per test file, with the
    repository's import roots first on ``sys.path`` (``layout``, default :func:`repo_layout`)."""
    layout = layout or repo_layout(root)
    code = layout_code(layout)
    spec = [(c.rel_path, c.lines) for c in cands]
    nonces = [new_nonce() for _ in test_files]
    jobs = [
        {
            "code": _TRACE_HARNESS.format(nonce=n, cands=spec, test_file=tf, layout=code),
            "cwd_copy": str(root),
            "timeout_s": timeout_s,
            "memory_mb": 2048,
        }
        for tf, n in zip(test_files, nonces, strict=True)
    ]
    out = TraceResult()
    for tf, nonce, res in zip(test_files, nonces, run_many(jobs, workers=workers), strict=True):
        payload = None
        for line in res.stdout_tail.splitlines():
            if line.startswith(nonce + " "):
                payload = line.split(" ", 1)[1]
        if payload is None:
            log.warning("tracing %s gave no report (%s); its tests are not used", tf, res.reason)
            out.no_report[tf] = res.reason or "no report"
            continue
        try:
            data = json.loads(zlib.decompress(base64.b64decode(payload)))
            tests = data.get("tests") or {}
            for nodeid, (ok, calls) in tests.items():
                out.tests[nodeid] = (bool(ok), [int(i) for i in calls])
        except (ValueError, TypeError, AttributeError, zlib.error) as exc:
            log.warning("tracing %s: unreadable report (%s)", tf, exc)
            out.no_report[tf] = f"unreadable report ({exc})"
            continue
        if data.get("error"):
            out.no_report[tf] = str(data["error"])
        if data.get("collect_errors"):
            out.collect_errors[tf] = str(data["collect_errors"][0])
        for name, where in (data.get("outside") or {}).items():
            out.outside.setdefault(str(name), (str(where), []))[1].append(tf)
    return out


# ------------------------------------------------------------------------------------------------ tasks


class NoTasksError(BadInputError):
    """A repository gave no GRPO task; the message says why (``search`` has the counts)."""

    def __init__(self, message: str, search: TaskSearch | None = None):
        super().__init__(message)
        self.search = search


def _first(d: dict[str, str]) -> str:
    k = next(iter(d))
    more = f" and {len(d) - 1} more" if len(d) > 1 else ""
    return f"{k}: {d[k]}{more}"


@dataclass
class TaskSearch:
    """How the tasks of a repository were found: the counts :meth:`explain` reports."""

    root: Path
    layout: Layout
    source_files: int
    candidates: int
    test_files: int
    trace: TraceResult
    passing: int  # traced tests that pass on the original code
    calling: int  # of those, tests that call a candidate
    tasks: list[Task]

    def outside_text(self) -> str:
        """Packages the tests imported from outside the repository, or ''."""
        if not self.trace.outside:
            return ""
        parts = []
        for name, (where, files) in sorted(self.trace.outside.items()):
            home = self.layout.homes.get(name, name)
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            parts.append(f"{name} from {where}, not the repository's {home} ({shown})")
        return (
            f"tests imported {'; '.join(parts)}: the import roots ({', '.join(self.layout.roots)}) come first on "
            "sys.path, so a conftest, a plugin or a sys.path edit brought in that copy"
        )

    def explain(self) -> str:
        """One line: every count between the candidates and the tasks, and what went wrong on the way."""
        t = self.trace
        parts = [
            f"{self.candidates} candidate functions in {self.source_files} source files",
            f"{len(t.tests)} tests traced in {self.test_files} test files",
            f"{self.passing} pass on the original code",
            f"{self.calling} of those call a candidate",
        ]
        if t.no_report:
            parts.append(f"{len(t.no_report)} test files failed to run ({_first(t.no_report)})")
        if t.collect_errors:
            parts.append(f"{len(t.collect_errors)} test files failed to collect ({_first(t.collect_errors)})")
        if self.outside_text():
            parts.append(self.outside_text())
        elif self.passing == 0 and (t.tests or t.collect_errors):
            parts.append(
                f"the tests run with the packages of {sys.prefix}: their dependencies must be installed there"
            )
        return f"{self.root}: {len(self.tasks)} GRPO tasks: " + "; ".join(parts)


def find_repo_tasks(
    root: str | Path,
    workers: int = 2,
    max_tasks: int | None = None,
    timeout_s: float = 120.0,
    progress: Callable[[str], None] | None = None,
) -> TaskSearch:
    """Tasks for every function of ``root`` that some originally-passing test calls, with the counts of the
    search. Raises :class:`BadInputError` for a repository without usable files, tests or functions (checked
    before anything runs). ``progress`` gets one line when the tracing starts."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise BadInputError(f"no such repository folder: {root}")
    rels, _ = list_repo_files(root)
    files = load_repo(root, "python", holdout=None, holdout_fraction=0.0)
    if not files:
        raise BadInputError(
            f"{root}: no usable Python files (tracked or not ignored by git, UTF-8, not generated or minified)"
        )
    # every test module runs, whatever its size (the corpus filters of load_repo are for training text)
    test_files = [
        r for r in rels if r.endswith(".py") and is_test_file(r) and r.rsplit("/", 1)[-1] != "conftest.py"
    ]
    if not test_files:
        raise BadInputError(
            f"{root}: no tests (GRPO rewards run the repository's pytest tests: test_*.py, *_test.py, tests/)"
        )
    cands = candidates(files)
    if not cands:
        raise BadInputError(f"{root}: no functions to mask (a function outside the tests with a body)")
    layout = repo_layout(root, rels)
    if progress:
        progress(
            f"tracing {len(test_files)} test files of {root} in the sandbox (import roots: "
            f"{', '.join(layout.roots)}) ..."
        )
    traced = trace_tests(root, cands, test_files, workers=workers, timeout_s=timeout_s, layout=layout)
    relevant: dict[int, list[str]] = {}
    passing = calling = 0
    for nodeid, (ok, calls) in sorted(traced.tests.items()):
        if ok:
            passing += 1
            calling += bool(calls)
            for i in calls:
                relevant.setdefault(i, []).append(nodeid)
    texts = {f.path: f.text for f in files}
    tasks = []
    for i in sorted(relevant):
        c = cands[i]
        text = texts[c.rel_path]
        a, b = c.body
        tasks.append(
            Task(
                f"{c.rel_path}::{c.name}@{c.lines[0]}",
                "repo",
                text[:a],
                text[b:],
                relevant[i],
                c.rel_path,
                str(root),
                text[a:b],
                name=c.qualname or c.name,
            )
        )
        if max_tasks and len(tasks) >= max_tasks:
            break
    search = TaskSearch(
        root,
        layout,
        sum(not is_test_file(f.path) for f in files),
        len(cands),
        len(test_files),
        traced,
        passing,
        calling,
        tasks,
    )
    log.info("%s", search.explain())
    if tasks and search.outside_text():
        log.warning("%s: %s", root, search.outside_text())
    return search


def repo_tasks(root: str | Path, workers: int = 2, max_tasks: int | None = None) -> list[Task]:
    """Tasks for every function of ``root`` that some originally-passing test calls (:func:`find_repo_tasks`).
    Raises :class:`NoTasksError`, whose one-line message says why, when there is none."""
    search = find_repo_tasks(root, workers=workers, max_tasks=max_tasks)
    if not search.tasks:
        raise NoTasksError(search.explain(), search)
    return search.tasks
