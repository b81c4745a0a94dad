"""AR-ness metrics on hand-made decode orders, and a smoke run of ``diffucoder analyze`` on a tiny model."""

from __future__ import annotations

import json
import math

import pytest

from diffucoder_lsp.analysis import (
    ArCount,
    certainty,
    confidence_by_offset,
    decode_order,
    global_ar_count,
    global_ar_ness,
    local_ar_count,
    local_ar_ness,
    reveal_heatmap,
)
from diffucoder_lsp.analyze.collect import file_tasks, line_tasks
from diffucoder_lsp.cli import main


def steps_for(order: list[int]) -> list[int]:
    """Reveal steps of a span decoded one position per step in ``order``."""
    steps = [0] * len(order)
    for step, pos in enumerate(order):
        steps[pos] = step
    return steps


L2R = steps_for([0, 1, 2, 3, 4, 5])
REVERSED = steps_for([3, 2, 1, 0])


@pytest.mark.parametrize("k", [1, 2, 3, 6, 10])
def test_left_to_right_scores_one_everywhere(k):
    assert local_ar_ness([L2R], k) == 1.0
    assert global_ar_ness([L2R], k) == 1.0


def test_reversed_order_by_hand():
    # Every transition is -1 (and the first jumps from the prefix end to the far right): never local.
    for k in (1, 2, 4):
        assert local_ar_count(REVERSED, k) == ArCount(0, 4)
    # Right to left, the revealed position is always the rightmost still masked: rank N, N-1, ..., 1.
    # It is among the k leftmost for exactly k of the N reveals.
    assert [global_ar_ness([REVERSED], k) for k in (1, 2, 3, 4, 5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_skip_first_then_left_to_right_by_hand():
    span = steps_for([1, 2, 3, 0])
    # transitions from the prefix end (-1): +2, +1, +1, -3
    assert local_ar_count(span, 1) == ArCount(2, 4)
    assert local_ar_count(span, 2) == ArCount(1, 4)  # only position 3 follows two +1 steps
    assert local_ar_count(span, 3) == ArCount(0, 4)
    # ranks among still-masked: 1 of {0,1,2,3}, 1 of {0,2,3}, 1 of {0,3}, 0 of {0}
    assert global_ar_count(span, 1) == ArCount(1, 4)
    assert global_ar_count(span, 2) == ArCount(4, 4)


def test_prefix_counts_as_a_run_for_early_reveals():
    span = steps_for([0, 1, 3, 2])
    # reveals 0 and 1 continue the prefix, so they count at any k even though only 1-2 reveals precede them
    assert [local_ar_count(span, k).hits for k in (1, 2, 5)] == [2, 2, 2]


def test_one_step_revealing_several_positions_reads_left_to_right():
    assert decode_order([1, 1, 0, 0]) == [2, 3, 0, 1]
    assert local_ar_ness([[0, 0, 1, 1]], 1) == 1.0
    assert global_ar_ness([[0, 0, 1, 1]], 1) == 1.0
    # order 2, 3, 0, 1: +3, +1, -3, +1
    assert local_ar_count([1, 1, 0, 0], 1) == ArCount(2, 4)


def test_unrevealed_positions_stay_masked():
    assert local_ar_count([None, 0], 1) == ArCount(0, 1)
    assert global_ar_count([None, 0], 1) == ArCount(0, 1)  # position 0 is still masked and to the left
    assert global_ar_count([None, 0], 2) == ArCount(1, 1)
    assert local_ar_ness([[None, None]], 1) is None


def test_spans_pool_by_reveals_not_by_ratio():
    long_l2r = steps_for(list(range(6)))
    short_rev = steps_for([1, 0])
    assert local_ar_ness([long_l2r, short_rev], 1) == pytest.approx(6 / 8)


def test_bad_inputs():
    with pytest.raises(ValueError):
        local_ar_count([0], 0)
    with pytest.raises(ValueError):
        decode_order([0, -1])
    with pytest.raises(ValueError):
        reveal_heatmap([[0]], bins=0)


def test_heatmap_diagonals():
    eye = reveal_heatmap([steps_for([0, 1, 2, 3])], bins=4)
    assert eye == [[1.0 if t == p else 0.0 for p in range(4)] for t in range(4)]
    anti = reveal_heatmap([REVERSED], bins=4)
    assert anti == [[1.0 if t == 3 - p else 0.0 for p in range(4)] for t in range(4)]
    # partial spans are skipped; a span shorter than the bins leaves empty columns at zero
    mixed = reveal_heatmap([[0, None], steps_for([1, 0])], bins=4)
    assert [sum(mixed[t][p] for t in range(4)) for p in range(4)] == [1.0, 0.0, 1.0, 0.0]


def test_confidence_by_offset_pools_per_offset():
    assert confidence_by_offset([[1.0, 0.5], [0.0]]) == [(0, 0.5, 2), (1, 0.5, 1)]


def test_certainty_maps_every_algorithm_to_unit_interval():
    assert certainty(0.0, "entropy") == 1.0
    assert certainty(-math.log(4), "entropy") == pytest.approx(0.25)
    assert certainty(0.3, "maskgit_plus") == 0.3
    assert certainty(1.5, "topk_margin") == 1.0


def test_line_tasks_rebuild_the_text_and_round_robin(tmp_path):
    text = "a = 1\n\nb = 2\n"
    tasks = line_tasks("t", text)
    assert [t.middle for t in tasks] == ["a = 1", "b = 2"]
    assert all(t.prefix + t.middle + t.suffix == text for t in tasks)
    (tmp_path / "x.py").write_text("x1\nx2\nx3\n")
    (tmp_path / "y.py").write_text("y1\n")
    picked = file_tasks([tmp_path / "x.py", tmp_path / "y.py"], limit=3)
    assert [t.middle for t in picked] == ["x1", "y1", "x2"]


def test_first_pass_recorder_scores_like_the_sampler(tiny_ckpt):
    """The recorded first-step confidence of a revealed position equals the sampler's own for that reveal."""
    from diffucoder_lsp.analyze.collect import FirstPassRecorder
    from diffucoder_lsp.engine.denoiser import FullCanvasDenoiser
    from diffucoder_lsp.engine.infill import infill_stream
    from diffucoder_lsp.engine.sampler import SamplingOptions
    from diffucoder_lsp.model.loading import load_model

    lm = load_model(tiny_ckpt, device="cpu", dtype="fp32")
    opts = SamplingOptions(temperature=0.0, steps=3)
    tok = lm.tokenizer
    rec = FirstPassRecorder(
        FullCanvasDenoiser(lm.model),
        options=opts,
        mask_id=tok.mask_id,
        allowed_vocab=min(tok.vocab_size, lm.config.vocab_size),
    )
    stream = infill_stream(  # the recorder scores raw logits, as analyze runs it: no healing, no held stops
        lm,
        "def f(x):\n    return <|mask|>\n",
        length=6,
        options=opts,
        denoiser=rec,
        heal=False,
        nonblank=False,
    )
    canvas, first = next(stream)
    stream.close()
    a, b = canvas.hole_spans[0]
    assert sorted(rec.first) == list(range(a, b))  # every masked position scored, not only the revealed
    for col, conf in zip(first.cols.tolist(), first.confidence.tolist(), strict=True):
        assert rec.first[col] == pytest.approx(certainty(conf, "entropy"), rel=1e-5)


def test_analyze_smoke_writes_json_and_plots(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "held_out.py"
    src.write_text("def add(a, b):\n    total = a + b\n    return total\n")
    out = tmp_path / "out"
    rc = main(
        [
            "analyze",
            "--model",
            str(tiny_ckpt),
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--files",
            str(src),
            "--limit",
            "2",
            "--temperatures",
            "1.0,0.2",
            "--out",
            str(out),
            "--max-k",
            "3",
            "--bins",
            "4",
        ]
    )
    assert rc == 0
    for name in ("analysis.json", "ar_ness.png", "reveal_heatmap.png", "first_step_confidence.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "analysis.json") in capsys.readouterr().out
    report = json.loads((out / "analysis.json").read_text())
    assert [e["temperature"] for e in report["temperatures"]] == [0.2, 1.0]
    assert report["tasks"] == {"source": "files", "count": 2}
    assert len(report["runs"]) == 4
    for run in report["runs"]:
        # one token per step: the reveal steps are a permutation of 0..length-1
        assert sorted(run["reveal_steps"]) == list(range(run["length"]))
        assert len(run["first_step_certainty"]) == run["length"]
        assert all(0.0 <= c <= 1.0 for c in run["first_step_certainty"])
    for entry in report["temperatures"]:
        assert set(entry["local_ar_ness"]) == {"1", "2", "3"}
        assert all(
            0.0 <= v <= 1.0 for v in [*entry["local_ar_ness"].values(), *entry["global_ar_ness"].values()]
        )
        assert entry["global_ar_ness"]["3"] >= entry["global_ar_ness"]["1"]  # monotone in k
        heat = entry["reveal_heatmap"]
        assert len(heat) == 4 and all(len(row) == 4 for row in heat)
        for p in range(4):
            assert sum(heat[t][p] for t in range(4)) == pytest.approx(1.0, abs=1e-3) or all(
                heat[t][p] == 0 for t in range(4)
            )
        assert entry["first_step_confidence"][0]["offset"] == 0
        assert entry["first_step_confidence"][0]["count"] == 2


def test_analyze_steps_option_and_bad_input(tiny_ckpt, tmp_path):
    src = tmp_path / "f.py"
    src.write_text("x = compute(1, 2, 3)\n")
    out = tmp_path / "o"
    rc = main(
        [
            "analyze",
            "--model",
            str(tiny_ckpt),
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--files",
            str(src),
            "--temperatures",
            "0.5",
            "--steps",
            "2",
            "--out",
            str(out),
            "--no-plots",
        ]
    )
    assert rc == 0
    run = json.loads((out / "analysis.json").read_text())["runs"][0]
    assert set(run["reveal_steps"]) == {0, 1}
    assert not (out / "ar_ness.png").exists()
    assert main(["analyze", "--files", str(tmp_path / "missing.py"), "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["analyze", "--temperatures", "hot"])
