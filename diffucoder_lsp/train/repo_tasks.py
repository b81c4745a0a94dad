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

The report is compressed (zlib + base64) on a nonce line, the same private-fd scheme as the rewards.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadInputError
from ..sandbox import run_many
from .repo_data import CHATML, body_after_docstring, function_bodies, line_starts, load_repo
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


def read_jsonl_tasks(path: str | Path, chat: bool = False) -> list[Task]:
    """Tasks of a JSONL file. ``chat``: the prompt is a question for an Instruct model, wrapped in ChatML; the
    reward then runs the code block of the answer (see :func:`rewards.extract_code`), not prompt + answer."""
    tasks = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInputError(f"cannot read tasks {path}: {exc}") from exc
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
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not tests:
            raise BadInputError(f"{path}:{n}: needs a string prompt and a non-empty tests list")
        prompt = CHATML.format(query=row["prompt"]) if chat else row["prompt"]
        task_id = str(row.get("id", f"jsonl/{n}"))
        tasks.append(Task(task_id, "jsonl", prompt, "", [str(t) for t in tests], chat=chat))
    return tasks


# ------------------------------------------------------------------------------------------------- repo


def is_test_file(rel: str) -> bool:
    """Test code (never a task): test modules, anything under tests/, and conftest.py (fixtures)."""
    name = rel.rsplit("/", 1)[-1]
    return (
        name == "conftest.py"
        or name.startswith("test_")
        or name.endswith("_test.py")
        or "/tests/" in f"/{rel}"
    )


@dataclass
class Candidate:
    rel_path: str
    name: str
    lines: list[int]  # the def line and its first decorator's line (co_firstlineno is either)
    body: tuple[int, int]  # character span of the body


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
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = body_after_docstring(node)
            if not body:
                continue
            a = starts[body[0].lineno - 1]
            if a not in spans:
                continue
            lines = [node.lineno] + [d.lineno for d in node.decorator_list]
            out.append(Candidate(f.path, node.name, sorted(set(lines)), spans[a]))
    return out


_TRACE_HARNESS = r"""
import base64, json, os, sys, zlib
_NONCE = {nonce!r}
_CANDS = {cands!r}
_FILE = {test_file!r}
_fd = os.dup(1)
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 1)
os.dup2(_null, 2)
_index = {{}}
for _i, (_rel, _lines) in enumerate(_CANDS):
    for _ln in _lines:
        _index[(os.path.realpath(_rel), _ln)] = _i
import pytest
class _Trace:
    def __init__(self):
        self.calls = {{}}
        self.ok = {{}}
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
_t = _Trace()
try:
    pytest.main(["-q", "-p", "no:cacheprovider", _FILE], plugins=[_t])
except BaseException:
    pass
_out = {{k: [bool(_t.ok.get(k)), sorted(v)] for k, v in _t.calls.items()}}
os.write(_fd, (_NONCE + " " + base64.b64encode(zlib.compress(json.dumps(_out).encode())).decode() + "\n").encode())
os._exit(0)
"""


def trace_tests(
    root: str | Path,
    cands: list[Candidate],
    test_files: list[str],
    workers: int = 2,
    timeout_s: float = 120.0,
) -> dict[str, tuple[bool, list[int]]]:
    """{test node id: (passed, [candidate indices it called])}, one sandbox run per test file."""
    spec = [(c.rel_path, c.lines) for c in cands]
    nonces = [new_nonce() for _ in test_files]
    jobs = [
        {
            "code": _TRACE_HARNESS.format(nonce=n, cands=spec, test_file=tf),
            "cwd_copy": str(root),
            "timeout_s": timeout_s,
            "memory_mb": 2048,
        }
        for tf, n in zip(test_files, nonces, strict=True)
    ]
    out: dict[str, tuple[bool, list[int]]] = {}
    for tf, nonce, res in zip(test_files, nonces, run_many(jobs, workers=workers), strict=True):
        payload = None
        for line in res.stdout_tail.splitlines():
            if line.startswith(nonce + " "):
                payload = line.split(" ", 1)[1]
        if payload is None:
            log.warning("tracing %s gave no report (%s); its tests are not used", tf, res.reason)
            continue
        try:
            data = json.loads(zlib.decompress(base64.b64decode(payload)))
        except (ValueError, zlib.error) as exc:
            log.warning("tracing %s: unreadable report (%s)", tf, exc)
            continue
        for nodeid, (ok, calls) in data.items():
            out[nodeid] = (bool(ok), [int(i) for i in calls])
    return out


def repo_tasks(root: str | Path, workers: int = 2, max_tasks: int | None = None) -> list[Task]:
    """Tasks for every function of ``root`` that some originally-passing test calls."""
    root = Path(root).resolve()
    files = load_repo(root, "python", holdout=None, holdout_fraction=0.0)
    cands = candidates(files)
    test_files = [
        f.path for f in files if is_test_file(f.path) and f.path.rsplit("/", 1)[-1] != "conftest.py"
    ]
    if not cands or not test_files:
        raise BadInputError(
            f"{root}: no test files or no functions to mask (tests are test_*.py / *_test.py)"
        )
    traced = trace_tests(root, cands, test_files, workers=workers)
    relevant: dict[int, list[str]] = {}
    for nodeid, (ok, calls) in sorted(traced.items()):
        if ok:
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
            )
        )
        if max_tasks and len(tasks) >= max_tasks:
            break
    log.info(
        "repo %s: %d candidate functions, %d traced tests, %d tasks",
        root,
        len(cands),
        len(traced),
        len(tasks),
    )
    return tasks
