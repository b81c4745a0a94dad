"""Pretraining: resume gives the same next step as an uninterrupted run; export loads and gives the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffucoder_lsp.cli import main
from diffucoder_lsp.model.config import ModelConfig
from diffucoder_lsp.model.network import DreamModel
from diffucoder_lsp.model.tokenizer import CodeTokenizer
from diffucoder_lsp.train.corpus import build_corpus, train_tokenizer
from diffucoder_lsp.train.pretrain import PretrainArgs, Trainer, export, lr_lambda


def _module(i: int) -> str:
    return (
        f"import os\n\n\nclass Thing{i}:\n    def __init__(self, value={i}):\n        self.value = value\n\n"
        f"    def double(self):\n        return self.value * 2\n\n\n"
        f"def helper_{i}(items):\n    out = []\n    for item in items:\n        if item > {i}:\n"
        f"            out.append(item)\n    return out\n"
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    src = root / "src"
    src.mkdir()
    for i in range(80):
        (src / f"m{i}.py").write_text(_module(i))
    build_corpus(root / "corpus", [src], stdlib=False, site_packages=False, valid_fraction=0.2)
    train_tokenizer(root / "corpus", 320, root / "corpus" / "tokenizer.json")
    return root / "corpus"


def _args(corpus, out, **kw) -> PretrainArgs:
    base = dict(
        corpus=str(corpus),
        out=str(out),
        config="tiny",
        steps=5,
        batch_size=4,
        seq_len=48,
        lr=3e-3,
        warmup=2,
        seed=7,
        threads=1,
        autocast="off",
        eval_every=0,
        eval_batches=1,
        ckpt_minutes=1e9,
    )
    base.update(kw)
    return PretrainArgs(**base)


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer._core().state_dict().items()}


def test_resume_reproduces_the_next_step(corpus, tmp_path):
    straight = Trainer(_args(corpus, tmp_path / "a"))
    metrics = [straight.train_step() for _ in range(3)]
    expected_params = _params(straight)

    first = Trainer(_args(corpus, tmp_path / "b"))
    for _ in range(2):
        first.train_step()
    first.save()
    del first
    resumed = Trainer(_args(corpus, tmp_path / "b", resume=True))
    assert resumed.step == 2
    m = resumed.train_step()
    assert m["loss"] == metrics[2]["loss"] and m["lr"] == metrics[2]["lr"]
    got = _params(resumed)
    for k, v in expected_params.items():
        assert torch.equal(got[k], v), k
    # Training actually moved the weights (the equality above is not vacuous).
    fresh = Trainer(_args(corpus, tmp_path / "c"))
    assert not torch.equal(_params(fresh)["lm_head.weight"], expected_params["lm_head.weight"])


def test_prefetched_batches_train_exactly_as_inline_ones(corpus, tmp_path):
    """The batch prefetcher (on by default on a GPU) builds each step's batch ahead in a thread: the same
    batches, so the same losses and weights as building them inline; a whole run with it completes."""
    inline = Trainer(_args(corpus, tmp_path / "a", prefetch=False))
    assert inline._prefetcher is None
    want = [inline.train_step()["loss"] for _ in range(4)]
    ahead = Trainer(_args(corpus, tmp_path / "b", prefetch=True))
    got = [ahead.train_step()["loss"] for _ in range(2)]
    assert ahead._pending is not None and ahead._pending[0] == 2  # step 2's batch was built ahead
    got += [ahead.train_step()["loss"] for _ in range(2)]
    assert got == want
    for k, v in _params(inline).items():
        assert torch.equal(_params(ahead)[k], v), k
    summary = Trainer(_args(corpus, tmp_path / "c", prefetch=True)).fit(progress=False)
    assert summary["step"] == 5 and summary["val_loss"] > 0


def test_time_limit_stops_saves_and_resume_completes(corpus, tmp_path):
    out = tmp_path / "run"
    summary = Trainer(_args(corpus, out, time_limit=1e-9, eval_every=3)).fit(progress=False)
    assert summary["reason"] == "time_limit" and summary["step"] == 1
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 1 and state["data_position"] == 1 and state["tokens_seen"] > 0
    assert not list(out.glob("*.tmp"))  # atomic write left no temp file
    done = Trainer(_args(corpus, out, resume=True, eval_every=3)).fit(progress=False)
    assert done["reason"] == "steps" and done["step"] == 5
    assert "val_loss" in done and done["val_loss"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "end"
    # where the run started: the model before any step, on the same fixed validation batches (logged once)
    start = [r for r in lines if r.get("step") == 0]
    assert len(start) == 1 and start[0]["val_loss"] > 0 and start[0]["tokens_seen"] == 0


def test_lr_schedule_warmup_then_cosine_to_floor():
    assert lr_lambda(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_lambda(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_export_loads_and_gives_the_same_logits(corpus, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(_args(corpus, run, steps=2))
    trainer.fit(progress=False)
    folder = export(run, tmp_path / "export", max_shard_bytes=60_000)  # force several shards
    names = sorted(p.name for p in folder.iterdir())
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= set(
        names
    )
    shards = list(folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and all(s.stat().st_size < 60_000 for s in shards)
    raw_cfg = json.loads((folder / "config.json").read_text())
    assert raw_cfg["model_type"] == "Dream" and raw_cfg["torch_dtype"] == "bfloat16"

    cfg = ModelConfig.from_file(folder / "config.json")
    tok = CodeTokenizer.from_dir(folder, cfg)
    assert tok.mask_id == trainer.tok.mask_id and tok.eos_id == trainer.tok.eos_id
    state = {}
    for s in shards:
        state.update(load_file(str(s)))
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    loaded = DreamModel(cfg)
    loaded.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    loaded.eval()

    reference = DreamModel(cfg)
    reference.load_state_dict(
        {k: v.to(torch.bfloat16).float() for k, v in trainer._core().state_dict().items()}
    )
    reference.eval()
    ids = torch.tensor([tok.encode(_module(3))[:40]])
    with torch.no_grad():
        assert torch.equal(loaded.denoise_logits(ids), reference.denoise_logits(ids))


def test_cli_pretrain_and_export(corpus, tmp_path, capsys):
    run = tmp_path / "clirun"
    common = [
        "train",
        "pretrain",
        "--corpus",
        str(corpus),
        "--out",
        str(run),
        "--config",
        "tiny",
        "--steps",
        "4",
    ]
    common += [
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--threads",
        "1",
        "--eval-every",
        "0",
        "--autocast",
        "off",
    ]
    rc = main(common + ["--stop-at", "2"])  # replaying a time-limited run: stop at 2 of a 4-step schedule
    assert rc == 0 and (run / "last.pt").is_file()
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["reason"] == "stop_at"
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert state["scheduler"]["last_epoch"] == 2 and state["args"]["steps"] == 4
    assert main(common + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 4
    rc = main(["train", "export", str(run), "--out", str(tmp_path / "exp")])
    assert rc == 0 and (tmp_path / "exp" / "model.safetensors").is_file()
    assert main(["train", "export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_the_progress_bar_eta_honours_the_time_limit():
    """A run that --time-limit will stop shows the steps the limit leaves room for, not all of --steps."""
    from diffucoder_lsp.train.pretrain import Horizon

    class Bar:
        total, refreshed = 1000, 0

        def refresh(self):
            self.refreshed += 1

    bar = Bar()
    h = Horizon(1000)
    h.fit(15, 1.0, 10.0, 20.0)  # at step 15, 1 s a step and 10 s of 20 left: about 10 more
    h.show(bar)
    assert bar.total == 25 and bar.refreshed == 1
    h.show(bar)  # unchanged: no repaint
    assert bar.refreshed == 1
    short = Horizon(18)  # --steps comes first
    short.fit(15, 1.0, 10.0, 20.0)
    short.show(bar)
    assert bar.total == 18
    free = Horizon(1000)  # no limit: the planned steps
    free.fit(15, 1.0, 10.0, None)
    free.show(bar)
    assert bar.total == 1000
    grpo = Horizon(40)  # a bar of outer steps over a schedule of 4 optimizer steps each
    grpo.fit(12, 1.0, 10.0, 20.0)
    grpo.show(bar, per=4)
    assert bar.total == 6  # ceil(22 / 4)
