"""Adaptation of a pretrained base: starts from the base (lower loss than a random init), anneals attention,
trains what its mode says, resumes exactly, and its merged weights equal the trained model."""

from __future__ import annotations

import pytest
import torch

from diffucoder_lsp.train.adapt import AdaptArgs, AdaptTrainer, causal_to_full_mask, merged_state
from diffucoder_lsp.train.corpus import build_corpus, train_tokenizer
from diffucoder_lsp.train.pretrain import PretrainArgs, Trainer, export


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    src = root / "src"
    src.mkdir()
    for i in range(60):
        (src / f"m{i}.py").write_text(
            f"class Thing{i}:\n    def __init__(self, value={i}):\n        self.value = value\n\n"
            f"    def double(self):\n        return self.value * 2\n\n\ndef helper_{i}(items):\n"
            f"    return [item for item in items if item > {i}]\n"
        )
    build_corpus(root / "corpus", [src], stdlib=False, site_packages=False, valid_fraction=0.2)
    train_tokenizer(root / "corpus", 320, root / "corpus" / "tokenizer.json")
    return root / "corpus"


@pytest.fixture(scope="module")
def base(corpus, tmp_path_factory):
    """A tiny AR-ish base: briefly pretrained on the corpus, exported as a checkpoint folder."""
    root = tmp_path_factory.mktemp("base")
    args = PretrainArgs(
        corpus=str(corpus),
        out=str(root / "run"),
        config="tiny",
        steps=40,
        batch_size=8,
        seq_len=48,
        lr=5e-3,
        warmup=2,
        seed=1,
        threads=1,
        autocast="off",
        eval_every=0,
        eval_batches=0,
        ckpt_minutes=1e9,
    )
    Trainer(args).fit(progress=False)
    return export(root / "run", root / "base")


def _args(corpus, base, out, **kw):
    fields = dict(
        corpus=str(corpus),
        out=str(out),
        base=str(base),
        steps=6,
        batch_size=4,
        seq_len=48,
        lr=3e-3,
        warmup=1,
        seed=3,
        threads=1,
        autocast="off",
        eval_every=0,
        eval_batches=1,
        ckpt_minutes=1e9,
        anneal_steps=4,
        mode="lora",
        lora_r=4,
        lora_alpha=8,
    )
    fields.update(kw)
    return AdaptArgs(**fields)


def _loss_on(trainer, step=0):
    batch = trainer.train_data.batch(step, trainer.args.batch_size)
    with torch.no_grad():
        loss, _ = trainer._loss(batch, torch.Generator().manual_seed(5))
    return float(loss)


def test_first_loss_is_finite_and_below_a_random_init(corpus, base, tmp_path):
    adapted = AdaptTrainer(_args(corpus, base, tmp_path / "a"))
    random_init = Trainer(
        PretrainArgs(
            corpus=str(corpus),
            out=str(tmp_path / "r"),
            config="tiny",
            seq_len=48,
            batch_size=4,
            seed=3,
            threads=1,
            autocast="off",
        )
    )
    mine, theirs = _loss_on(adapted), _loss_on(random_init)
    assert torch.isfinite(torch.tensor(mine)) and mine < theirs


def test_anneal_mask_goes_from_causal_to_full():
    g = torch.Generator().manual_seed(0)
    m0 = causal_to_full_mask(16, 0.0, g)[0, 0]
    assert torch.equal(m0, torch.ones(16, 16, dtype=torch.bool).tril())
    half = causal_to_full_mask(16, 0.5, g)[0, 0]
    future = ~torch.ones(16, 16, dtype=torch.bool).tril()
    share = half[future].float().mean()
    assert 0.3 < share < 0.7 and half[~future].all()  # the causal part is always visible
    assert causal_to_full_mask(16, 1.0, g) is None


@pytest.mark.parametrize("mode", ["lora", "partial", "full"])
def test_modes_train_what_they_say(corpus, base, tmp_path, mode):
    t = AdaptTrainer(_args(corpus, base, tmp_path / mode, mode=mode))
    before = {k: v.detach().clone() for k, v in t._core().state_dict().items()}
    for _ in range(3):
        t.train_step()
    after = t._core().state_dict()
    emb = "model.embed_tokens.weight"
    mask = t.cfg.mask_token_id
    other_rows = torch.ones(before[emb].shape[0], dtype=torch.bool)
    other_rows[mask] = False
    changed_rows = ~torch.isclose(after[emb], before[emb]).all(-1)
    assert changed_rows[mask]  # the new token always learns
    mlp = (
        "model.layers.0.mlp.up_proj.weight"
        if mode != "lora"
        else "model.layers.0.mlp.up_proj.base_layer.weight"
    )
    if mode == "full":
        assert changed_rows[other_rows].any() and not torch.equal(after[mlp], before[mlp])
    else:
        assert not changed_rows[other_rows].any() and torch.equal(after[mlp], before[mlp])


def test_resume_continues_exactly_and_merge_equals_the_trained_model(corpus, base, tmp_path):
    straight = AdaptTrainer(_args(corpus, base, tmp_path / "a"))
    losses = [straight.train_step()["loss"] for _ in range(3)]
    first = AdaptTrainer(_args(corpus, base, tmp_path / "b"))
    for _ in range(2):
        first.train_step()
    first.save()
    del first
    resumed = AdaptTrainer(_args(corpus, base, tmp_path / "b", resume=True))
    assert resumed.step == 2 and resumed.train_step()["loss"] == losses[2]
    resumed.save()
    cfg, plain, meta = merged_state(tmp_path / "b")
    assert meta["mode"] == "lora" and meta["step"] == 3 and not any("lora" in k for k in plain)
    ids = torch.randint(0, 200, (1, 20), generator=torch.Generator().manual_seed(0))
    from diffucoder_lsp.model.network import DreamModel

    merged = DreamModel(cfg)
    merged.load_state_dict(plain)
    resumed.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), resumed._core()(ids), atol=1e-4, rtol=1e-4)


def test_packaged_lora_run_rebuilds_the_trained_model_from_the_base(corpus, base, tmp_path):
    from diffucoder_lsp.model.adaptation import build_adapted_folder
    from diffucoder_lsp.model.loading import load_model
    from diffucoder_lsp.train.adapt import package_adaptation

    trainer = AdaptTrainer(_args(corpus, base, tmp_path / "run"))
    for _ in range(3):
        trainer.train_step()
    trainer.save()
    summary = package_adaptation(tmp_path / "run", base, tmp_path / "ad", rank=4)
    assert summary["step"] == 3 and summary["mode"] == "lora"
    assert summary["max_relative_error"] < 0.02  # LoRA's rank-4 change is exact at rank 4 (bf16 factors)
    folder = build_adapted_folder(tmp_path / "ad", base, tmp_path / "merged")
    lm = load_model(folder, device="cpu", dtype="fp32")
    ids = torch.randint(0, 200, (1, 20), generator=torch.Generator().manual_seed(0))
    trainer.model.eval()
    with torch.no_grad():
        want, got = trainer._core()(ids), lm.model(ids)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.95
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_lookahead_adaptation_starts_as_the_causal_base_and_learns_its_biases(corpus, base, tmp_path):
    """With the learned lookahead the step-0 model is the AR base (causal logits), and the biases train at
    their own rate, in a group of their own."""
    from diffucoder_lsp.model.loading import load_model

    t = AdaptTrainer(_args(corpus, base, tmp_path / "look", lookahead=True, lookahead_lr=0.1))
    assert t.cfg.learned_lookahead and t._attention(0, 48) is None  # no anneal: the biases are the anneal
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    ar = load_model(base, device="cpu", dtype="fp32").model
    t.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            t._core()(ids), ar.lm_head(ar.hidden_states(ids, causal=True)), atol=2e-3, rtol=0
        )
    t.model.train()
    (group,) = [
        g
        for g in t.optimizer.param_groups
        if any(
            p.ndim == 1
            and p.numel() == t.cfg.num_attention_heads
            and p is t._core().model.layers[0].self_attn.lookahead_bias
            for p in g["params"]
        )
    ]
    assert len(group["params"]) == t.cfg.num_hidden_layers and group["weight_decay"] == 0.0
    bias = t._core().model.layers[0].self_attn.lookahead_bias
    before = bias.detach().clone()
    for _ in range(3):
        t.train_step()
    assert not torch.equal(bias.detach(), before)


def test_packaged_lookahead_run_rebuilds_the_trained_model(corpus, base, tmp_path):
    """The base has no lookahead biases: packaging and merging both start them at their initial value."""
    from diffucoder_lsp.model.adaptation import build_adapted_folder, read_manifest
    from diffucoder_lsp.model.loading import load_model
    from diffucoder_lsp.train.adapt import package_adaptation

    trainer = AdaptTrainer(_args(corpus, base, tmp_path / "run", lookahead=True, lookahead_lr=0.1))
    for _ in range(3):
        trainer.train_step()
    trainer.save()
    package_adaptation(tmp_path / "run", base, tmp_path / "ad", rank=4)
    assert read_manifest(tmp_path / "ad")["config"]["learned_lookahead"] is True
    lm = load_model(
        build_adapted_folder(tmp_path / "ad", base, tmp_path / "merged"), device="cpu", dtype="fp32"
    )
    assert lm.config.learned_lookahead
    want = trainer._core().model.layers[1].self_attn.lookahead_bias.detach()
    torch.testing.assert_close(lm.model.model.layers[1].self_attn.lookahead_bias, want, atol=0.05, rtol=0.01)
    ids = torch.randint(0, 200, (1, 20), generator=torch.Generator().manual_seed(0))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), trainer._core()(ids), atol=0.05, rtol=0.05)
