"""GRPO: task extraction from a repository with tests, JSONL tasks, a toy run that really learns, robustness, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffucoder_lsp.cli import main
from diffucoder_lsp.errors import BadInputError
from diffucoder_lsp.train.grpo import GRPOArgs, GRPOTrainer
from diffucoder_lsp.train.repo_tasks import Task, read_jsonl_tasks, repo_tasks
from diffucoder_lsp.train.rewards import repo_rewards

TOYREPO = Path(__file__).resolve().parent.parent / "fixtures" / "toyrepo"


@pytest.mark.slow
def test_repo_tasks_mask_functions_their_passing_tests_call(tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(TOYREPO, root)
    tasks = {t.task_id.split("@")[0]: t for t in repo_tasks(root)}
    assert set(tasks) == {
        "toymath/ops.py::clamp",
        "toymath/ops.py::mean",
        "toymath/ops.py::running_total",
        "toymath/text.py::count_vowels",
        "toymath/text.py::title_words",
        "toymath/text.py::__init__",
        "toymath/text.py::greet",
    }, "unused_helper is called by no test; test files themselves are never tasks"
    clamp = tasks["toymath/ops.py::clamp"]
    assert clamp.tests == [
        "tests/test_ops.py::test_clamp_inside",
        "tests/test_ops.py::test_clamp_low_and_high",
    ]
    # the known-failing test calls count_vowels too but gives no signal: not relevant
    assert tasks["toymath/text.py::count_vowels"].tests == ["tests/test_text.py::test_count_vowels"]
    # the hole is the body after signature and docstring; prefix + truth + suffix is the original file
    original = (root / "toymath" / "ops.py").read_text()
    assert clamp.prefix + clamp.truth + clamp.suffix == original
    assert clamp.prefix.endswith('"""Limit value to the closed interval [low, high]."""\n')
    assert clamp.truth.startswith("    if value < low:")
    # the truth passes its tests, an empty-ish body does not
    good, bad = repo_rewards(
        [original, clamp.prefix + "    return None\n" + clamp.suffix],
        [clamp.rel_path] * 2,
        [clamp.repo_root] * 2,
        [clamp.tests] * 2,
    )
    assert good.passed == 2 and bad.passed == 0


def test_jsonl_tasks(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(
        json.dumps({"prompt": "def f():\n", "tests": ["assert f() == 1"]})
        + "\n"
        + json.dumps({"prompt": "def g():\n", "tests": "assert g() == 2"})
        + "\n"
    )
    tasks = read_jsonl_tasks(p)
    assert [t.tests for t in tasks] == [["assert f() == 1"], ["assert g() == 2"]]
    assert tasks[0].kind == "jsonl" and tasks[0].prefix == "def f():\n"
    chat = read_jsonl_tasks(p, chat=True)[0]
    assert (
        chat.chat
        and chat.prefix.startswith("<|im_start|>system")
        and chat.prefix.endswith("<|im_start|>assistant\n")
    )
    assert "def f():" in chat.prefix and chat.tests == ["assert f() == 1"]
    p.write_text(json.dumps({"prompt": "def f():\n", "tests": []}) + "\n")
    with pytest.raises(BadInputError):
        read_jsonl_tasks(p)


TOY_TASKS = [
    Task("t0", "custom", "def f(x):\n    return ", " + 1\n"),
    Task("t1", "custom", "for i in range(10):\n    print(", ")\n"),
]


def low_id_reward(rows, ids, texts):
    """Deterministic: the share of completion tokens whose id is below 160 (about half the tiny vocabulary)."""
    return [sum(1 for t in r if t < 160) / len(r) for r in ids]


def _toy_args(ckpt, out, **kw) -> GRPOArgs:
    base = dict(
        out=str(out),
        model=str(ckpt),
        lora=False,
        steps=30,
        prompts_per_step=2,
        group=8,
        completion_len=8,
        sampling_steps=4,
        temperature=1.0,
        lr=3e-3,
        beta=0.01,
        threads=1,
        device="cpu",
        export="none",
        ckpt_every=0,
    )
    base.update(kw)
    return GRPOArgs(**base)


@pytest.mark.slow
def test_toy_grpo_raises_mean_reward(tiny_ckpt_fp32, tmp_path, capsys):
    """The reward is a real, learnable signal (which tokens the policy emits); checked on two seeds by a margin
    on fixed-seed evaluation rollouts before/after, and on the training curve itself."""
    report = []
    for seed in (0, 1):
        tr = GRPOTrainer(
            _toy_args(tiny_ckpt_fp32, tmp_path / f"s{seed}", seed=seed), TOY_TASKS, low_id_reward
        )
        s = tr.fit(progress=False, eval_rounds=4)
        curve = [r["reward"] for r in tr.metrics.read() if "reward" in r and "event" not in r]
        report.append(
            (seed, s["eval_reward_before"], s["eval_reward_after"], np.mean(curve[:5]), np.mean(curve[-5:]))
        )
        assert s["eval_reward_after"] > s["eval_reward_before"] + 0.1
        assert np.mean(curve[-5:]) > np.mean(curve[:5]) + 0.08
        assert Path(s["plot"]).is_file()
    with capsys.disabled():
        for seed, b, a, c0, c1 in report:
            print(
                f"\n[grpo toy] seed {seed}: eval reward {b:.3f} -> {a:.3f}; curve {c0:.3f} -> {c1:.3f}",
                end="",
            )
        print()


@pytest.mark.slow
def test_decoupled_estimator_and_lora_run(tiny_ckpt_fp32, tmp_path):
    tr = GRPOTrainer(
        _toy_args(
            tiny_ckpt_fp32,
            tmp_path / "d",
            estimator="decoupled",
            lora=True,
            lr=1e-2,
            steps=4,
            inner_steps=2,
            micro_batch=5,
        ),
        TOY_TASKS,
        low_id_reward,
    )
    s = tr.fit(progress=False, eval_rounds=0)
    recs = [r for r in tr.metrics.read() if "kl" in r]
    assert s["step"] == 4 and len(recs) == 4
    assert all(np.isfinite([r["loss"], r["kl"], r["clip_fraction"]]).all() for r in recs)
    # with two optimizer steps per batch the second sees a ratio != 1: clipping and KL can become non-zero
    assert any(r["kl"] > 0 for r in recs)


def test_reward_failure_does_not_stop_training(tiny_ckpt_fp32, tmp_path):
    def broken(rows, ids, texts):
        raise RuntimeError("reward server down")

    tr = GRPOTrainer(_toy_args(tiny_ckpt_fp32, tmp_path / "b", steps=2, plot=False), TOY_TASKS, broken)
    s = tr.fit(progress=False, eval_rounds=0)
    recs = [r for r in tr.metrics.read() if "reward" in r and "event" not in r]
    assert s["step"] == 2 and all(r["reward"] == 0.0 and "reward server down" in r["failures"] for r in recs)


@pytest.mark.slow
def test_resume_continues_at_the_saved_step(tiny_ckpt_fp32, tmp_path):
    out = tmp_path / "r"
    GRPOTrainer(_toy_args(tiny_ckpt_fp32, out, steps=2, plot=False), TOY_TASKS, low_id_reward).fit(
        progress=False, eval_rounds=0
    )
    tr = GRPOTrainer(
        _toy_args(tiny_ckpt_fp32, out, steps=3, resume=True, plot=False), TOY_TASKS, low_id_reward
    )
    assert tr.step == 2 and (out / "ref.pt").is_file()
    assert tr.fit(progress=False, eval_rounds=0)["step"] == 3


@pytest.mark.slow
def test_cli_grpo_on_jsonl_tasks(tiny_ckpt_fp32, tmp_path, capsys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "def add(a, b):\n", "tests": ["assert add(1, 2) == 3"]}) + "\n")
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "grpo",
            "--tasks",
            str(tasks),
            "--model",
            str(tiny_ckpt_fp32),
            "--out",
            str(out),
            "--steps",
            "2",
            "--group",
            "2",
            "--prompts-per-step",
            "1",
            "--completion-len",
            "8",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--export",
            "merged",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{") :])
    assert (
        summary["step"] == 2 and (out / "model" / "config.json").is_file() and (out / "reward.png").is_file()
    )
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(
        k in recs[1]
        for k in ("reward", "kl", "clip_fraction", "completion_chars", "completion_tokens", "loss")
    )
    assert main(["train", "grpo", "--out", str(out)]) == 2


@pytest.mark.slow
def test_grpo_step_on_repo_tasks_uses_the_sandbox(tiny_ckpt_fp32, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(TOYREPO, root)
    tasks = [t for t in repo_tasks(root) if t.task_id.startswith("toymath/ops.py::mean")]
    tr = GRPOTrainer(
        _toy_args(
            tiny_ckpt_fp32,
            tmp_path / "g",
            steps=1,
            group=2,
            prompts_per_step=1,
            plot=False,
            completion_len=32,
        ),
        tasks,
    )
    truth_tokens = len(tr.tok.encode(tasks[0].truth))
    assert tasks[0].hole_tokens == int(truth_tokens * 1.25) + 4, "repo holes are sized from the original body"
    s = tr.fit(progress=False, eval_rounds=0)
    rec = [r for r in tr.metrics.read() if "reward" in r and "event" not in r][0]
    # a random tiny model writes no passing body; the reward is then the syntax part only, never an error
    assert s["step"] == 1 and 0.0 <= rec["reward"] <= 0.1 + 1e-9 and rec["tests_passed"] == 0.0
    assert (root / "toymath" / "ops.py").read_text().count("total / len(values)") == 1, "repo untouched"


def test_test_files_are_never_tasks():
    from diffucoder_lsp.train.repo_layout import is_test_file

    for rel in ("tests/helpers.py", "test_x.py", "pkg/x_test.py", "conftest.py", "pkg/tests/conftest.py"):
        assert is_test_file(rel), rel
    for rel in ("pkg/testing_utils.py", "toymath/ops.py", "contest.py"):
        assert not is_test_file(rel), rel


def test_steps_walk_shuffled_passes_over_every_task():
    """Each pass of n / k steps holds every task once, so stretches of the reward curve compare like with like;
    the order is a pure function of (seed, step, rank), as a resumed run needs, and each pass reshuffles."""
    from types import SimpleNamespace

    tasks = [Task(task_id=f"t{i}", kind="jsonl", prefix=f"def f{i}():\n") for i in range(12)]
    fake = SimpleNamespace(args=SimpleNamespace(seed=7, prompts_per_step=3), tasks=tasks, rank=0)
    ids = [[t.task_id for t in GRPOTrainer.pick_tasks(fake, step)] for step in range(12)]
    for p in range(3):  # 4 steps a pass
        seen = [i for step in ids[4 * p : 4 * p + 4] for i in step]
        assert sorted(seen) == sorted(t.task_id for t in tasks)
    assert ids[:4] != ids[4:8], "a new order each pass"
    assert [t.task_id for t in GRPOTrainer.pick_tasks(fake, 5)] == ids[5]
    other = SimpleNamespace(args=SimpleNamespace(seed=8, prompts_per_step=3), tasks=tasks, rank=0)
    assert [[t.task_id for t in GRPOTrainer.pick_tasks(other, s)] for s in range(4)] != ids[:4]
    few = SimpleNamespace(args=SimpleNamespace(seed=0, prompts_per_step=5), tasks=tasks[:2], rank=0)
    assert len(GRPOTrainer.pick_tasks(few, 0)) == 5  # more prompts than tasks: passes run on


def test_flat_rewards_are_reported_once_with_what_to_change():
    from diffucoder_lsp.train.grpo import FlatRewardWatch

    watch = FlatRewardWatch(steps=3)
    flat = {"reward": 0.0, "flat_groups": 2, "groups": 2}
    assert watch.observe(flat) is None and watch.observe(flat) is None
    advice = watch.observe(flat)
    assert advice and "lower --temperature" in advice and "examples/grpo_tasks.jsonl" in advice
    assert watch.observe(flat) is None  # once
    all_pass = FlatRewardWatch(steps=1).observe({"reward": 1.1, "flat_groups": 2, "groups": 2})
    assert all_pass and "harder tasks" in all_pass
    learning = FlatRewardWatch(steps=3)
    assert [learning.observe(m) for m in (flat, {"reward": 0.3, "flat_groups": 1, "groups": 2}, flat)] == [
        None,
        None,
        None,
    ]


EXAMPLE_TASKS = Path(__file__).resolve().parents[2] / "examples" / "grpo_tasks.jsonl"
REFERENCE = {
    "add": "    return a + b\n",
    "reverse": "    return s[::-1]\n",
    "fib": "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "unique": "    return list(dict.fromkeys(values))\n",
}


def test_shipped_example_tasks_reward_a_right_body_and_not_an_empty_one():
    """The README's GRPO example: every task reads, an empty body fails its tests (so they test the body),
    and a right body passes them, through the sandboxed reward."""
    from diffucoder_lsp.sandbox import isolation_error
    from diffucoder_lsp.train.rewards import jsonl_rewards

    tasks = read_jsonl_tasks(EXAMPLE_TASKS)
    assert len(tasks) >= 20 and len({t.task_id for t in tasks}) == len(tasks)
    if isolation_error():
        pytest.skip(isolation_error())
    empty = jsonl_rewards([t.prefix + "    pass\n" for t in tasks], [t.tests for t in tasks], per_test_s=2.0)
    assert all(r.passed < r.total for r in empty), [
        t.task_id for t, r in zip(tasks, empty, strict=True) if r.passed == r.total
    ]
    right = [t for t in tasks if t.task_id in REFERENCE]
    good = jsonl_rewards(
        [t.prefix + REFERENCE[t.task_id] for t in right], [t.tests for t in right], per_test_s=2.0
    )
    assert len(right) == len(REFERENCE) and all(r.passed == r.total for r in good)


def test_scope_cut_keeps_the_body_and_drops_what_follows_it():
    from diffucoder_lsp.train.grpo import scope_cut

    prefix = 'def add(a, b):\n    """Sum."""\n'
    assert scope_cut(prefix, "    return a + b\n\ndef sub(a, b):\n    return a -") == "    return a + b\n\n"
    assert scope_cut(prefix, "    if a:\n        return a\n    return b\nprint(") == (
        "    if a:\n        return a\n    return b\n"
    )
    assert scope_cut(prefix, "    return a + b") == "    return a + b"  # nothing after the body
    method = "class P:\n    def area(self):\n"
    assert scope_cut(method, "        return 1\n    def other(self):\n") == "        return 1\n"
    # a hole in the middle of a line keeps that line whatever its indentation; no def: unchanged
    assert scope_cut("def f():\n    return ", "1\nx = 2\n") == "1\n"
    assert scope_cut("x = ", "1\ny = 2\n") == "1\ny = 2\n"


PIECES = [
    "    ",
    "return a + b",
    "\n",
    "\n\n",
    "def sub(a, b):",
    "        ",
    "if a:",
    "x",
    " ",
    "\t",
    "\r\n",
    "print(",
]
PROMPTS = [
    'def add(a, b):\n    """Sum."""\n',
    "class P:\n    def area(self):\n",
    "def f():\n    return ",
    "x = ",
]


@settings(max_examples=600, deadline=None)
@given(prefix=st.sampled_from(PROMPTS), pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=10))
def test_a_rollout_settles_only_where_every_longer_text_is_cut_the_same(prefix, pieces):
    from diffucoder_lsp.train.grpo import scope_cut, scope_settled

    text = "".join(pieces)
    for k in range(1, len(text) + 1):
        if scope_settled(prefix, text[:k]):
            assert scope_cut(prefix, text[:k]) == scope_cut(prefix, text), (text[:k], text)
            break


def test_rollouts_stop_where_the_function_ends(tiny_ckpt, tmp_path, monkeypatch):
    """A rollout row ends once the text written from its hole's start leaves the function: its text, and so its
    reward, is the one denoising every position gives, in fewer steps."""
    import diffucoder_lsp.train.grpo as grpo

    tasks = [Task(task_id="t", prefix="def f(x):\n", suffix="", tests=["assert f(1) == 1"], kind="jsonl")]
    args = GRPOArgs(out=str(tmp_path / "g"), model=str(tiny_ckpt), group=2, completion_len=12, lora=False)
    trainer = GRPOTrainer(args, tasks, reward_fn=lambda *a: [0.0, 0.0])
    whole = trainer.rollout(tasks, seed=3)
    # the tiny random model never dedents on its own: settle each row after its third written token
    calls = []

    def settle_after_three(tok, canvases, prefixes):
        mask_id = tok.mask_id

        def check(x, masked):
            calls.append(1)
            out = []
            for r, canvas in enumerate(canvases):
                s, e = canvas.hole_spans[0]
                first = int((x[r, s:e] == mask_id).nonzero()[0]) if (x[r, s:e] == mask_id).any() else e - s
                if first == 3 and bool(masked[r, s + 3 : e].any()):
                    out.append((r, s + 3, e))
            return out

        return check

    monkeypatch.setattr(grpo, "scope_settle", settle_after_three)
    part = trainer.rollout(tasks, seed=3)
    stops = trainer.tok.stop_ids
    for ids_whole, ids_part in zip(whole[3], part[3], strict=True):
        assert ids_part[:3] == ids_whole[:3] and all(t in stops for t in ids_part[3:])
    assert calls and all(t.startswith(p) for t, p in zip(whole[4], part[4], strict=True))


# ------------------------------------------------------------------------- repositories of ordinary layouts

SRCREPO = Path(__file__).resolve().parent.parent / "fixtures" / "srcrepo"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_repo_layout_puts_declared_roots_then_src_then_the_root_first(tmp_path):
    from diffucoder_lsp.train import repo_layout as rt
    from diffucoder_lsp.train.repo_layout import repo_layout

    if rt.tomllib is None:
        pytest.skip("no TOML reader here (Python 3.10 without tomli): pyproject.toml is not read")

    pkg = {"__init__.py": "", "core.py": "def f():\n    return 1\n"}

    def repo(name, extra, pkg_dir):
        files = {f"{pkg_dir}/{k}": v for k, v in pkg.items()}
        files.update({"tests/test_core.py": "def test_f():\n    pass\n"}, **extra)
        return _write(tmp_path / name, files)

    cases = {
        "setuptools_where": (
            {"pyproject.toml": '[tool.setuptools.packages.find]\nwhere = ["lib"]\n'},
            "lib/pkg",
        ),
        "setuptools_package_dir": (
            {"pyproject.toml": '[tool.setuptools.package-dir]\n"" = "code"\n'},
            "code/pkg",
        ),
        "hatch": (
            {"pyproject.toml": '[tool.hatch.build.targets.wheel]\npackages = ["python/pkg"]\n'},
            "python/pkg",
        ),
        "poetry": (
            {"pyproject.toml": '[tool.poetry]\npackages = [{include = "pkg", from = "lib"}]\n'},
            "lib/pkg",
        ),
        "pdm": ({"pyproject.toml": '[tool.pdm.build]\npackage-dir = "source"\n'}, "source/pkg"),
        "setup_cfg": ({"setup.cfg": "[options]\npackage_dir =\n    =lib\n"}, "lib/pkg"),
        "src_undeclared": ({}, "src/pkg"),
        "flat": ({"pyproject.toml": "[project]\nname = 'pkg'\n"}, "pkg"),
    }
    for name, (extra, home) in cases.items():
        layout = repo_layout(repo(name, extra, home))
        want = (home.rsplit("/", 1)[0], ".") if "/" in home else (".",)
        assert layout.roots == want, name
        assert layout.homes == {"pkg": home}, name  # tests/ is test code, not a package of the repository
    # declarations that point outside the repository or nowhere are ignored, and so is a broken pyproject.toml;
    # at the root, only folders with __init__.py are packages, and a stdlib name or setup.py never is
    odd = _write(
        tmp_path / "odd",
        {
            "pyproject.toml": '[tool.setuptools.packages.find]\nwhere = ["../elsewhere", "/usr", "missing"]\n',
            "mylib/__init__.py": "",
            "mod.py": "X = 1\n",
            "json.py": "",
            "setup.py": "",
            "docs/conf.py": "",
            "src/nspkg/part.py": "",
        },
    )
    layout = repo_layout(odd)
    assert layout.roots == ("src", ".")
    assert layout.homes == {"nspkg": "src/nspkg", "mylib": "mylib", "mod": "mod.py"}
    (odd / "pyproject.toml").write_text("[tool.setuptools\n")
    assert repo_layout(odd).roots == ("src", ".")


def _decoy_repo(tmp_path: Path, name: str = "decoy") -> Path:
    """The src-layout fixture plus an installed-looking copy of its package in env/site-packages, which its
    conftest appends to sys.path (where site-packages sits); load_repo skips env/, the sandbox copies it."""
    root = tmp_path / name
    shutil.copytree(SRCREPO, root)
    shutil.copytree(root / "src" / "shadowpkg", root / "env" / "site-packages" / "shadowpkg")
    return root


@pytest.mark.slow
def test_src_layout_tasks_and_rewards_use_the_repository_copy_not_an_installed_one(tmp_path):
    root = _decoy_repo(tmp_path)
    tasks = {t.name: t for t in repo_tasks(root)}
    assert set(tasks) == {"slugify", "chunks", "Stack.__init__", "Stack.push", "Stack.pop"}
    assert {t.rel_path for t in tasks.values()} == {"src/shadowpkg/core.py"}
    assert tasks["slugify"].tests == ["tests/test_core.py::test_slugify"]
    slug = tasks["slugify"]
    good, bad = repo_rewards(
        [slug.prefix + slug.truth + slug.suffix, slug.prefix + "    return None\n" + slug.suffix],
        [slug.rel_path] * 2,
        [slug.repo_root] * 2,
        [slug.tests] * 2,
    )
    # with the installed copy first, the wrong body would pass (the tests would not run it)
    assert (good.passed, bad.passed) == (1, 0), (good, bad)


@pytest.mark.slow
def test_src_layout_named_like_a_package_installed_here(tmp_path):
    """pallets/click's case: the environment has click installed, the repository's click is in src/."""
    import importlib.util

    if importlib.util.find_spec("click") is None:
        pytest.skip("click is not installed in this environment")
    root = tmp_path / "click"
    shutil.copytree(SRCREPO, root)
    (root / "src" / "shadowpkg").rename(root / "src" / "click")
    for rel in ("tests/test_core.py", "pyproject.toml"):
        (root / rel).write_text((root / rel).read_text().replace("shadowpkg", "click"))
    tasks = repo_tasks(root)
    assert len(tasks) == 5 and {t.rel_path for t in tasks} == {"src/click/core.py"}


@pytest.mark.slow
def test_no_task_says_why_in_one_line(tmp_path, capsys):
    from diffucoder_lsp.train.repo_tasks import NoTasksError

    # a conftest that puts the installed-looking copy first: the tests run it, not the repository's
    root = _decoy_repo(tmp_path, "first")
    conftest = root / "conftest.py"
    conftest.write_text(conftest.read_text().replace("sys.path.append(", "sys.path.insert(0, "))
    with pytest.raises(NoTasksError) as err:
        repo_tasks(root)
    msg = str(err.value)
    assert "\n" not in msg
    for part in (
        "0 GRPO tasks",
        "5 candidate functions",
        "3 tests traced in 1 test files",
        "3 pass on the original code",
        "0 of those call a candidate",
        "tests imported shadowpkg from env/site-packages/shadowpkg/__init__.py, not the repository's "
        "src/shadowpkg (tests/test_core.py)",
    ):
        assert part in msg, (part, msg)
    # the tests need a package that is not installed: their collection error is named
    broken = tmp_path / "broken"
    shutil.copytree(SRCREPO, broken)
    test = broken / "tests" / "test_core.py"
    test.write_text("import not_installed_dependency_xyz\n" + test.read_text())
    out = tmp_path / "out"
    rc = main(["train", "grpo", "--repo", str(broken), "--out", str(out)])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err_lines[-1].startswith("diffucoder: error:") and "0 GRPO tasks" in err_lines[-1]
    assert (
        "1 test files failed to collect (tests/test_core.py: ModuleNotFoundError: No module named "
        "'not_installed_dependency_xyz')" in err_lines[-1]
    ), err_lines[-1]


def test_no_task_explanation_names_every_stage():
    from diffucoder_lsp.train.repo_tasks import Layout, TaskSearch, TraceResult

    trace = TraceResult(
        tests={"tests/test_a.py::test_x": (False, [0])},
        no_report={"tests/test_b.py": "timeout after 120 s", "tests/test_c.py": "exit code 1"},
        outside={"pkg": ("/venv/lib/site-packages/pkg/__init__.py", ["tests/test_a.py"])},
    )
    search = TaskSearch(Path("/r"), Layout(("src", "."), {"pkg": "src/pkg"}), 4, 9, 3, trace, 0, 0, [])
    msg = search.explain()
    assert "\n" not in msg and msg.startswith("/r: 0 GRPO tasks: 9 candidate functions in 4 source files")
    assert "1 tests traced in 3 test files; 0 pass on the original code; 0 of those call a candidate" in msg
    assert "2 test files failed to run (tests/test_b.py: timeout after 120 s and 1 more)" in msg
    assert (
        "pkg from /venv/lib/site-packages/pkg/__init__.py, not the repository's src/pkg (tests/test_a.py)"
        in msg
    )


@pytest.mark.slow
def test_cli_list_tasks_prints_one_line_per_task_and_trains_nothing(tmp_path, capsys, monkeypatch):
    root = tmp_path / "toy"
    shutil.copytree(TOYREPO, root)
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "grpo", "--repo", str(root), "--list-tasks"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert rc == 0 and len(lines) == 7, captured
    assert "toymath/ops.py::clamp\t2 tests" in lines and "toymath/text.py::Greeter.greet\t1 test" in lines
    assert "7 GRPO tasks" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"], "nothing written"
    rc = main(["train", "grpo", "--repo", str(root), "--list-tasks", "--max-tasks", "2"])
    assert rc == 0 and len(capsys.readouterr().out.splitlines()) == 2


def test_cli_grpo_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    jsonl = tmp_path / "tasks.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": "def f():\n", "tests": ["assert f() == 1"]})
        + '\n{"prompt": "def g():\\n", "tests": [\n'
    )
    no_tests_row = tmp_path / "no_tests.jsonl"
    no_tests_row.write_text("\n" + json.dumps({"prompt": "def f():\n", "tests": []}) + "\n")
    not_utf8 = tmp_path / "latin1.jsonl"
    not_utf8.write_bytes(b'{"prompt": "caf\xe9", "tests": ["assert 1"]}\n')
    code = 'def double(value):\n    """Twice the value, for the tests that are missing."""\n    return value * 2\n'
    no_tests = _write(tmp_path / "no_tests", {"pkg/__init__.py": "", "pkg/core.py": code})
    no_files = _write(tmp_path / "no_files", {"README.md": "nothing to run\n", "data.bin": "x"})
    out = tmp_path / "out"
    cases = [
        (["--tasks", str(jsonl)], f"{jsonl}:2: not JSON"),
        (["--tasks", str(no_tests_row)], f"{no_tests_row}:2: needs"),
        (["--tasks", str(not_utf8)], "not UTF-8"),
        (["--tasks", str(tmp_path / "missing.jsonl")], "cannot read tasks"),
        (["--repo", str(tmp_path / "missing")], "no such repository folder"),
        (["--repo", str(no_tests)], "no tests"),
        (["--repo", str(no_files)], "no usable Python files"),
        (["--repo", str(no_files), "--list-tasks"], "no usable Python files"),
        ([], "give --tasks"),
    ]
    for extra, want in cases:
        rc = main(["train", "grpo", *extra, "--out", str(out)])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("diffucoder: error:"), (extra, captured)
        assert want in lines[0], (want, lines[0])
        assert not out.exists() and not captured.out, extra
    assert main(["train", "grpo", "--tasks", str(EXAMPLE_TASKS)]) == 2
    assert "give --out" in capsys.readouterr().err


def test_the_hole_takes_the_prompts_last_newline():
    """The model writes newline + indentation as one token; a prompt ending in a bare newline would ask it for
    a line start it never saw (every rollout of the example came out empty)."""
    from diffucoder_lsp.train.grpo import hole_prefix

    t = Task("t", "jsonl", 'def f():\n    """Doc."""\n', tests=["assert f() == 1"])
    assert hole_prefix(t) == 'def f():\n    """Doc."""'
    assert hole_prefix(Task("m", "jsonl", "x = ", tests=["assert x"])) == "x = "
    chat = Task("c", "jsonl", "<|im_start|>user\nq\n", tests=["assert 1"], chat=True)
    assert hole_prefix(chat) == chat.prefix  # a chat answer is read out of its code block, not spliced


def test_the_evaluations_before_and_after_show_progress(tiny_ckpt_fp32, tmp_path, capsys):
    """No silent minutes: each fixed-seed rollout round of the before/after evaluation ticks a bar on stderr."""
    tr = GRPOTrainer(
        _toy_args(tiny_ckpt_fp32, tmp_path / "p", plot=False), TOY_TASKS, lambda r, i, t: [0.5] * len(r)
    )
    assert tr.mean_reward(2, progress=True, tag="before") == 0.5
    err = capsys.readouterr().err
    assert "grpo eval before" in err and "2/2" in err and "reward=0.500" in err
    tr.mean_reward(1)
    assert "grpo eval" not in capsys.readouterr().err  # quiet unless asked


def test_grpo_progress_ends_where_the_time_limit_stops_it(tiny_ckpt_fp32, tmp_path, monkeypatch):
    """`--time-limit 15` on a CPU makes ~20 steps of the 200 planned: the bar ends there, the rate stays up."""
    from diffucoder_lsp.train import grpo

    now = [0.0]

    def clock() -> float:  # every reading is a second later
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(grpo.time, "monotonic", clock)
    tr = GRPOTrainer(
        _toy_args(tiny_ckpt_fp32, tmp_path / "t", steps=200, plot=False, time_limit=0.5),
        TOY_TASKS,
        low_id_reward,
    )
    s = tr.fit(progress=False, eval_rounds=0)
    assert s["reason"] == "time_limit" and s["step"] < 200
    assert tr.horizon.total <= s["step"] + 2
    lrs = [r["lr"] for r in tr.metrics.read() if "lr" in r and "event" not in r]
    assert lrs[-1] > 0.9 * max(lrs)  # the schedule spans --steps (tuning.py)
