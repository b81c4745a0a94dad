"""SFT: held-out loss goes down, LoRA merge/export is exact and loadable, resume is exact, the CLI works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffucoder_lsp.cli import main
from diffucoder_lsp.model.loading import load_model
from diffucoder_lsp.train.lora import load_adapter, merge_lora
from diffucoder_lsp.train.sft import SFTArgs, SFTTrainer, run_sft

TOYREPO = Path(__file__).resolve().parent.parent / "fixtures" / "toyrepo"


def _args(ckpt, out, **kw) -> SFTArgs:
    base = dict(
        out=str(out),
        repo=str(TOYREPO),
        model=str(ckpt),
        holdout=["toymath/text.py"],
        steps=30,
        batch_size=8,
        seq_len=128,
        lora=False,
        lr=3e-3,
        warmup=2,
        threads=1,
        device="cpu",
        eval_lines=0,
        eval_batches=4,
        export="none",
        ckpt_every=0,
    )
    base.update(kw)
    return SFTArgs(**base)


@pytest.mark.slow
def test_full_sft_lowers_heldout_loss(tiny_ckpt_fp32, tmp_path, capsys):
    s = run_sft(_args(tiny_ckpt_fp32, tmp_path / "run", eval_lines=4), progress=False)
    before, after = s["before"]["heldout_loss"], s["after"]["heldout_loss"]
    with capsys.disabled():
        print(f"\n[sft full] held-out loss {before:.3f} -> {after:.3f}")
    assert after < 0.8 * before
    assert "intrinsic_exact_match" in s["before"] and "intrinsic_exact_match" in s["after"]
    assert json.loads((tmp_path / "run" / "eval_after.json").read_text())["heldout_loss"] == after
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r and "event" not in r]
    assert len(steps) == 30 and all(r["tok_s"] > 0 for r in steps)


@pytest.mark.slow
def test_lora_sft_export_is_exact_and_loads(tiny_ckpt_fp32, tmp_path, capsys):
    tr = SFTTrainer(_args(tiny_ckpt_fp32, tmp_path / "run", lora=True, lora_r=8, lr=1e-2, steps=20))
    s = tr.fit(progress=False)
    with capsys.disabled():
        print(
            f"[sft lora] held-out loss {s['before']['heldout_loss']:.3f} -> {s['after']['heldout_loss']:.3f}"
        )
    assert s["after"]["heldout_loss"] < s["before"]["heldout_loss"]
    x = torch.randint(10, 300, (2, 24))
    tr.core.eval()  # LoRA dropout off
    with torch.no_grad():
        adapted = tr.core(x)
    tr.args.export, tr.args.export_dtype = "both", "float32"
    out = tr.export()
    merged = load_model(out["model"], device="cpu", dtype="fp32")
    base = load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32").model
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), adapted, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(load_adapter(base, out["adapter"])(x), adapted, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(
            load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32").model(x), adapted, atol=1e-3
        )
    # the exported folder has no remote code and the base's tokenizer
    names = {p.name for p in Path(out["model"]).iterdir()}
    assert "tokenizer.json" in names and not any(n.endswith(".py") for n in names)
    assert "auto_map" not in json.loads((Path(out["model"]) / "config.json").read_text())


def test_merge_lora_removes_wrappers(tiny_ckpt_fp32):
    from diffucoder_lsp.train.lora import apply_lora, has_lora

    m = load_model(tiny_ckpt_fp32, device="cpu", dtype="fp32").model
    keys = set(m.state_dict())
    apply_lora(m, r=4, alpha=8, dropout=0.0)
    assert has_lora(m) and all(p.requires_grad == ("lora_" in n) for n, p in m.named_parameters())
    merge_lora(m)
    assert not has_lora(m) and set(m.state_dict()) == keys


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tiny_ckpt_fp32, tmp_path):
    common = dict(steps=4, eval_batches=0, lora=True, lora_r=4, lr=1e-2, grad_accum=2, batch_size=2)
    straight = SFTTrainer(_args(tiny_ckpt_fp32, tmp_path / "a", **common))
    straight.fit(progress=False)
    first = SFTTrainer(_args(tiny_ckpt_fp32, tmp_path / "b", **common))
    first.args.steps = 2
    first.fit(progress=False)
    resumed = SFTTrainer(_args(tiny_ckpt_fp32, tmp_path / "b", resume=True, **common))
    assert resumed.step == 2
    resumed.fit(progress=False)
    a = {n: p for n, p in straight.core.named_parameters() if "lora_" in n}
    b = {n: p for n, p in resumed.core.named_parameters() if "lora_" in n}
    assert a.keys() == b.keys() and len(a) > 0
    assert any(p.abs().sum() > 0 for n, p in a.items() if "lora_B" in n), (
        "training moved the adapter off zero"
    )
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_cli_sft_writes_a_loadable_model(tiny_ckpt_fp32, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "sft",
            "--repo",
            str(TOYREPO),
            "--model",
            str(tiny_ckpt_fp32),
            "--out",
            str(out),
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--seq-len",
            "96",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--eval-lines",
            "3",
            "--eval-batches",
            "1",
            "--export",
            "both",
            "--humaneval",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["step"] == 3 and (out / "adapter" / "adapter_config.json").is_file()
    # the split is written down and reported; the held-out lines' change is paired and printed with intervals
    held = (out / "heldout.txt").read_text().split()
    assert held and all(p.endswith(".py") for p in held)
    assert len((out / "heldout.jsonl").read_text().splitlines()) == len(held)
    assert f"held out {len(held)} of " in captured.err
    change = summary["change"]
    assert change["n"] == 3 and len(change["exact_match_delta_ci95"]) == 2
    assert "held-out lines (n=3): exact match" in captured.err and "95 % CI" in captured.err
    assert len((out / "eval_before_lines.jsonl").read_text().splitlines()) == 3
    he = summary["after"]["humaneval_infill"]["single-line/oracle"]
    assert he["n"] == 2 and 0.0 <= he["pass@1"] <= 100.0
    lm = load_model(summary["exported"]["model"], device="cpu")
    assert lm.model.dtype == torch.float32 or lm.model.dtype == torch.bfloat16
    assert main(["train", "sft", "--out", str(out)]) == 2  # neither --repo nor --instructions


@pytest.mark.parametrize("flag", ["--window-fraction", "--ordered-fraction", "--causal-fraction"])
def test_a_fraction_outside_0_1_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, flag):
    out = tmp_path / "run"
    rc = main(["train", "sft", "--repo", str(tmp_path), "--out", str(out), flag, "1.5"])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err and f"{flag} must be between 0 and 1, got 1.5" in err[-1]


def test_sharded_setups_are_refused_with_the_way_out():
    from types import SimpleNamespace

    from diffucoder_lsp.errors import BadInputError
    from diffucoder_lsp.train.tuning import check_distributed

    check_distributed(None, grad_accum=4)
    check_distributed(SimpleNamespace(distributed_type="DistributedType.MULTI_GPU"), grad_accum=4)
    with pytest.raises(BadInputError, match="multi_gpu.yaml"):
        check_distributed(SimpleNamespace(distributed_type="DistributedType.FSDP"))
    zero3 = SimpleNamespace(
        distributed_type="DistributedType.DEEPSPEED",
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)),
    )
    with pytest.raises(BadInputError, match="ZeRO-2"):
        check_distributed(zero3)
    zero2 = SimpleNamespace(
        distributed_type="DistributedType.DEEPSPEED",
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)),
    )
    check_distributed(zero2, grad_accum=1)
    with pytest.raises(BadInputError, match="grad-accum 1"):
        check_distributed(zero2, grad_accum=2)


def test_the_time_limit_sets_where_the_run_is_expected_to_end():
    """A 10-minute CPU run of 200 planned steps makes ~40: the progress bar's end is estimated from the median
    step time, never past --steps."""
    from diffucoder_lsp.train.pretrain import Horizon
    from diffucoder_lsp.train.tuning import make_optimizer

    assert Horizon(200).fit(1, 10.0, 10.0, None) == 200  # no limit: the planned steps
    h = Horizon(200)
    assert h.fit(1, 30.0, 30.0, 100.0) == 1 + 3  # 70 s left at 30 s a step
    assert h.fit(2, 10.0, 40.0, 100.0) == 2 + 2  # the upper median of (30, 10): 60 s left at 30 s a step
    assert h.fit(3, 10.0, 50.0, 100.0) == 3 + 5  # median of (30, 10, 10): 10 s a step, 50 s left
    assert Horizon(20).fit(1, 0.001, 0.001, 1000.0) == 20  # never past --steps
    assert Horizon(20).fit(5, 50.0, 200.0, 100.0) == 6  # past the limit: ends with the next step

    w = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(w, 1.0, 0.0, 2, 10, min_ratio=0.1)
    lrs = []
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[-1] == pytest.approx(0.1) and lrs[1] == pytest.approx(1.0)  # warm-up, then cosine to 10 %


def test_sft_progress_ends_where_the_time_limit_stops_it(tiny_ckpt_fp32, tmp_path, monkeypatch):
    from diffucoder_lsp.train import sft

    now = [0.0]

    def clock() -> float:  # every reading is a second later: a step takes a few "seconds"
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(sft.time, "monotonic", clock)
    tr = SFTTrainer(
        _args(
            tiny_ckpt_fp32, tmp_path / "run", steps=500, eval_batches=0, lora=True, lora_r=4, time_limit=0.5
        )
    )
    summary = tr.fit(progress=False)
    assert summary["reason"] == "time_limit" and summary["step"] < 500
    assert tr.horizon.total <= summary["step"] + 2  # the bar's end: where the limit stopped the run
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in lines if "lr" in r and "event" not in r]
    assert lrs[-1] > 0.9 * max(lrs)  # the schedule spans --steps: a short run keeps learning (tuning.py)


def test_causal_batches_train_as_a_left_to_right_lm(tiny_ckpt_fp32, tmp_path, monkeypatch):
    """``causal_fraction`` 1: every batch takes the causal loss (none the masked one), and the run trains."""
    from diffucoder_lsp.train import sft

    calls = {"causal": 0, "masked": 0}
    causal, masked = sft.head_causal_loss, sft.head_diffusion_loss

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(sft, "head_causal_loss", count("causal", causal))
    monkeypatch.setattr(sft, "head_diffusion_loss", count("masked", masked))
    trainer = sft.SFTTrainer(_args(tiny_ckpt_fp32, tmp_path / "run", steps=3, causal_fraction=1.0))
    first = trainer.train_step()
    for _ in range(2):
        last = trainer.train_step()
    assert calls == {"causal": 3, "masked": 0}
    assert math.isfinite(first["loss"]) and last["loss"] < first["loss"]
