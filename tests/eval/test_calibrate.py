"""``diffucoder eval calibrate``: editor-like requests, precision-vs-coverage curves and the threshold for a
target precision (checked on scripted outcomes), and the command end to end on a tiny model."""

from __future__ import annotations

import json

import pytest

from diffucoder_lsp.cli import main
from diffucoder_lsp.engine.confidence import STATISTICS, Calibration, read_calibration, write_calibration
from diffucoder_lsp.eval.calibrate import (
    Outcome,
    area,
    at_target,
    calibration_of,
    curve,
    documents_from_folder,
    format_report,
    is_correct,
    run_requests,
    sample_requests,
    summarize,
)

CODE = (
    "import os\n\n\ndef add(a, b):\n    total = a + b\n    return total\n\n\n"
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n"
)


def test_requests_hide_the_rest_of_a_line_reproducibly():
    docs = [("a.py", CODE), ("b.py", CODE.replace("total", "sum_")), ("skip.py", "x = <|mask|>\n")]
    first = sample_requests(docs, 8, seed=3)
    assert first == sample_requests(docs, 8, seed=3) and first != sample_requests(docs, 8, seed=4)
    assert len(first) == 8 and all(r.source != "skip.py" for r in first)
    texts = dict(docs)
    for r in first:
        assert r.truth.strip() and not r.truth.endswith("\n")
        line = texts[r.source].splitlines()[r.line_no]
        indent = len(line) - len(line.lstrip())
        assert indent <= r.column < len(line.rstrip())  # inside the line's code, or at its start
        assert r.prefix + r.truth + r.suffix == texts[r.source]  # nothing else is hidden
    hidden = sample_requests(docs, 8, seed=3, hide_lines=1)
    for r, h in zip(first, hidden, strict=True):  # the same draws, one more line hidden
        lines = texts[r.source].splitlines(keepends=True)
        assert (h.prefix, h.truth) == (r.prefix, r.truth)
        assert h.suffix == "\n" + "".join(lines[r.line_no + 2 :])


def test_only_the_first_line_counts_and_trailing_space_does_not():
    assert is_correct("return total  \n    more", "return total")
    assert not is_correct("return", "return total") and not is_correct("\nreturn total", "return total")


def test_each_request_is_scored_and_a_failing_completion_answers_nothing():
    from diffucoder_lsp.engine.confidence import SuggestionTokens

    requests = sample_requests([("a.py", CODE)], 3, seed=0)

    def completer(prefix, suffix):
        if prefix == requests[1].prefix:
            raise RuntimeError("boom")
        return requests[0].truth + "\n  more", SuggestionTokens((0.8, 0.6), (0, 1))

    outcomes = run_requests(requests, completer, progress=False)
    assert [o.answered for o in outcomes] == [True, False, True]
    assert outcomes[0].correct and outcomes[0].suggestion == requests[0].truth
    assert outcomes[0].scores["first_line_min"] == 0.8 and outcomes[0].scores["all_min"] == 0.6
    assert "boom" in outcomes[1].error and not outcomes[1].correct


def outcome(score: float, correct: bool, answered: bool = True) -> Outcome:
    return Outcome("f", 0, 0, "t", "s", answered, correct and answered, dict.fromkeys(STATISTICS, score), 1.0)


def test_curve_threshold_at_target_and_area():
    # 10 requests: one not answered at all; scores rank the right ones mostly first
    outcomes = [
        outcome(s, ok) for s, ok in [(0.9, True), (0.8, True), (0.8, False), (0.7, True), (0.5, False)]
    ]
    outcomes += [outcome(s, False) for s in (0.4, 0.3, 0.2, 0.1)] + [outcome(0.0, False, answered=False)]
    points = curve(outcomes, "all_min")
    assert [p.threshold for p in points] == [0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1]  # ties go together
    assert [p.answered for p in points] == [1, 3, 4, 5, 6, 7, 8, 9]
    assert points[1].coverage == 0.3 and points[1].precision == pytest.approx(2 / 3)
    assert points[-1].coverage == 0.9 and points[-1].precision == pytest.approx(3 / 9)
    hit = at_target(points, 0.6)
    assert (hit.threshold, hit.answered, hit.correct) == (0.5, 5, 3)  # the most covered point at >= 60%
    assert at_target(points, 0.75).threshold == 0.7 and at_target(points, 1.01) is None
    assert 0 < area(points) <= 0.9


def test_summary_picks_the_statistic_covering_most_at_the_target():
    outcomes = []
    for i in range(10):
        good = i < 5
        scores = dict.fromkeys(STATISTICS, 0.5)
        scores["all_mean"] = 0.9 if good else 0.1  # separates perfectly
        scores["first_line_min"] = (0.9 if i < 2 else 0.05) if good else (0.95 if i == 9 else 0.1)
        outcomes.append(Outcome("f", i, 0, "t", "s", True, good, scores, 1.0))
    summary = summarize(outcomes, 0.8)
    assert summary["best"] == "all_mean"
    assert summary["statistics"]["all_mean"]["at_target"]["coverage"] == 0.5
    assert summary["base_precision"] == 0.5
    cal = calibration_of(summary, {"alg": "entropy"}, {"seed": 0})
    assert (cal.statistic, cal.min_confidence, cal.target_precision) == ("all_mean", 0.9, 0.8)
    assert cal.measured["precision"] == 1.0 and cal.measured["seed"] == 0 and cal.alg == "entropy"
    assert calibration_of(summarize(outcomes, 1.01), {}, {}) is None
    text = format_report(summary)
    assert "best statistic: all_mean: minConfidence 0.9000" in text and "first_line_geomean" in text


def test_documents_from_a_folder_skip_binary_and_tool_folders(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(CODE)
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.py").write_text(CODE)
    assert documents_from_folder(tmp_path) == [("pkg/m.py", CODE)]


def test_calibrate_end_to_end_on_a_tiny_model(tiny_ckpt, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [{"path": f"m{i}.py", "sha": str(i), "text": CODE} for i in range(2)]
    (corpus / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, plot, card = tmp_path / "report.json", tmp_path / "curves.png", tmp_path / "card"
    argv = ["eval", "calibrate", "--corpus", str(corpus), "--split", "valid", "--limit", "5", "--seed", "1"]
    argv += ["--model", str(tiny_ckpt), "--device", "cpu", "--out", str(out), "--plot", str(plot)]
    argv += ["--settings", '{"maxTokens": 8}', "--target-precision", "0", "--write-calibration", str(card)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best statistic" in printed and "first_line_min" in printed
    report = json.loads(out.read_text())
    assert report["summary"]["requests"] == 5 and len(report["records"]) == 5
    assert set(report["summary"]["statistics"]) == set(STATISTICS)
    assert report["config"]["decoding"]["maxTokens"] == 8 and report["config"]["decoding"]["alg"] == "entropy"
    for record in report["records"]:
        assert set(record["scores"]) == set(STATISTICS)
        assert all(0.0 <= v <= 1.0 for v in record["scores"].values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cal = read_calibration(card)
    assert cal is not None and cal.statistic in STATISTICS and cal.decoding["maxTokens"] == 8
    assert cal.measured["requests"] == 5 and cal.target_precision == 0.0


def test_calibrating_ranked_lines_stores_their_gate_beside_the_default_one(tiny_ckpt, tmp_path, capsys):
    """--settings with rankLines and --write-calibration: the ranked part is written into the folder's existing
    calibration, which is kept; a folder without one is refused before anything runs."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [{"path": f"m{i}.py", "sha": str(i), "text": CODE} for i in range(2)]
    (corpus / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    card = tmp_path / "card"
    default = Calibration("all_mean", 0.3, 0.6, {"alg": "entropy"}, {"requests": 9})
    argv = ["eval", "calibrate", "--corpus", str(corpus), "--split", "valid", "--limit", "4", "--seed", "1"]
    argv += ["--model", str(tiny_ckpt), "--device", "cpu", "--out", str(tmp_path / "r.json")]
    argv += ["--settings", '{"rankLines": 2}', "--target-precision", "0", "--write-calibration", str(card)]
    assert main(argv) == 2 and not card.exists()
    assert "calibrate the default completions first" in capsys.readouterr().err
    write_calibration(card, default)
    assert main(argv) == 0
    cal = read_calibration(card)
    assert (cal.statistic, cal.min_confidence, cal.measured) == ("all_mean", 0.3, {"requests": 9})
    assert cal.ranked is not None and cal.ranked.decoding["rankLines"] == 2
    assert cal.ranked.measured["requests"] == 4


def test_calibrate_bad_input_exits_2(tmp_path, capsys):
    assert main(["eval", "calibrate", "--files", str(tmp_path / "missing")]) == 2
    assert main(["eval", "calibrate", "--files", str(tmp_path), "--target-precision", "2"]) == 2
    assert main(["eval", "calibrate", "--files", str(tmp_path), "--settings", '{"alg": "nope"}']) == 2
    assert main(["eval", "calibrate", "--files", str(tmp_path)]) == 2  # an empty folder: no lines
    assert "no eligible lines" in capsys.readouterr().err
