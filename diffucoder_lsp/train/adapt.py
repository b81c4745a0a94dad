"""Adapt a pretrained autoregressive model to masked diffusion, as DiffuCoder adapted Qwen2.5-Coder.

Why this recipe (public facts, ``shared/docs/diffucoder-facts.md``):

- **Start from the AR weights and keep the logit shift.** The hidden state at ``i`` still predicts token
  ``i + 1``, so at step 0 the network is a good next-token predictor and diffusion training only has to teach it
  to read masks and the text after them. Dropping the shift costs DiffuLLaMA 12-15 points.
- **Anneal attention from causal to full** over the first ``anneal_steps`` steps: each step's mask is causal
  plus a random share ``step / anneal_steps`` of the future (query, key) pairs, one draw per step from the
  step's seed, so a resumed run sees the same masks. Evaluation always uses full attention, the target.
- **Data**: the pretraining sampler's packed windows and infill-shaped rows (``prefix + span + eos pads +
  suffix``), so ``--length auto`` learns where a hole ends.
- **What trains** (``mode``): ``lora`` (rank-r adapters on every linear layer, plus norms, q/k/v biases and
  the new mask token's embedding row), ``partial`` (norms, biases, attention projections and the mask row) or
  ``full`` (everything). On a CPU the choice is a trade between speed per step and capacity; it is made by
  measurement (the model card's table).
- **What ships** is the *adaptation*, not the model: the difference to the base as low-rank factors per matrix
  (exact for LoRA, a truncated SVD otherwise) plus the changed vectors and the mask row, in bf16
  (:mod:`diffucoder_lsp.model.adaptation` reads it). The base comes from its licensed source at first use.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..model.config import ModelConfig
from ..model.network import DreamModel
from ..model.tokenizer import CodeTokenizer
from .pretrain import PretrainArgs, Trainer

log = logging.getLogger(__name__)

ADAPT_MODES = ("lora", "partial", "full")


@dataclass
class AdaptArgs(PretrainArgs):
    base: str = ""  # a checkpoint folder (e.g. the converted GGUF base)
    mode: str = "lora"
    lora_r: int = 32
    lora_alpha: int = 64
    anneal_steps: int = 100
    # learned lookahead (model/network.py): start causal, let each head learn how far it reads ahead; the
    # anneal is then not used. Its biases move at their own learning rate: from the causal start to a useful
    # opening is ~10 units, which the adapters' rate would take thousands of steps to cover
    lookahead: bool = False
    lookahead_lr: float = 0.05
    # no decay: a short adaptation should stay near the base, and decoupled decay would shrink the frozen
    # embedding rows of the low-capacity modes (their gradient is masked, the decay is not)
    weight_decay: float = 0.0


def load_plain_state(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A checkpoint folder's config and fp32 state dict (tied head filled in), through the checked loader."""
    from ..model.loading import load_model

    lm = load_model(folder, device="cpu", dtype="fp32")
    state = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    return lm.config, state


def causal_to_full_mask(length: int, share: float, generator: torch.Generator) -> torch.Tensor | None:
    """(1, 1, L, L) mask: causal plus a random ``share`` of the future pairs; None once ``share`` >= 1."""
    if share >= 1.0:
        return None
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    if share <= 0.0:
        return causal[None, None]
    extra = torch.rand(length, length, generator=generator) < share
    return (causal | extra)[None, None]


def _mask_row_only(param: torch.nn.Parameter, row: int) -> None:
    """Let only one row of an embedding learn (the new mask token's) in the low-capacity modes."""
    keep = torch.zeros(param.shape[0], 1, dtype=param.dtype)
    keep[row] = 1.0
    param.register_hook(lambda g: g * keep.to(g.device, g.dtype))


def prepare_model(base_cfg: ModelConfig, state: dict[str, torch.Tensor], args: AdaptArgs) -> DreamModel:
    """The base model with what ``args.mode`` trains set trainable (LoRA adapters injected in ``lora`` mode)."""
    if args.mode not in ADAPT_MODES:
        raise ValueError(f"mode must be one of {ADAPT_MODES}, got {args.mode!r}")
    if args.lookahead:
        base_cfg = dataclasses.replace(base_cfg, learned_lookahead=True)
    model = DreamModel(base_cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = [k for k in missing if k.endswith(".lookahead_bias")]
    if unexpected or len(new) != len(missing):
        raise ValueError(f"base state does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if base_cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if args.mode == "full":
        model.requires_grad_(True)
        return model
    if args.mode == "lora":
        from .lora import apply_lora

        apply_lora(model, args.lora_r, args.lora_alpha, 0.0)
    else:
        model.requires_grad_(False)
    for name, p in model.named_parameters():
        if name.endswith(("norm.weight", ".bias", ".lookahead_bias")) or (
            args.mode == "partial" and ".self_attn." in name and name.endswith("proj.weight")
        ):
            p.requires_grad_(True)
    emb = model.model.embed_tokens.weight
    emb.requires_grad_(True)
    _mask_row_only(emb, base_cfg.mask_token_id)
    return model


class AdaptTrainer(Trainer):
    """The pretraining loop over a pretrained base: same data, loss, checkpoints and resume."""

    args: AdaptArgs

    def __init__(self, args: AdaptArgs) -> None:
        if not args.base:
            raise ValueError("adaptation needs a base checkpoint folder")
        self._base_cfg, self._base_state = load_plain_state(args.base)
        super().__init__(args)
        self._base_state = None  # the model holds its own copy now

    def _tokenizer(self) -> CodeTokenizer:
        return CodeTokenizer.from_dir(self.args.base, self._base_cfg)

    def _config(self) -> ModelConfig:
        if self.args.lookahead:
            return dataclasses.replace(self._base_cfg, learned_lookahead=True)
        return self._base_cfg

    def _build_model(self) -> DreamModel:
        model = prepare_model(self._base_cfg, self._base_state, self.args)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("adapting in %s mode: %d trainable parameters", self.args.mode, n)
        return model

    def _param_groups(self, trained: list) -> list[dict]:
        """The lookahead biases get their own learning rate; the rest as in pretraining."""
        ahead = [p for n, p in trained if n.endswith(".lookahead_bias")]
        rest = [(n, p) for n, p in trained if not n.endswith(".lookahead_bias")]
        groups = super()._param_groups(rest)
        if ahead:
            # eps far below Adam's default: at the causal start a bias's gradient is ~exp(-12) small, under the
            # default 1e-8, which then damped its steps to nearly nothing (measured: -12 -> -11.5 in 66 steps)
            groups.append({"params": ahead, "weight_decay": 0.0, "lr": self.args.lookahead_lr, "eps": 1e-20})
        return groups

    def train_step(self) -> dict:
        out = super().train_step()
        if self.args.lookahead:  # how far the heads have opened: the run's metrics show the anneal it learns
            bias = torch.stack(
                [layer.self_attn.lookahead_bias.detach() for layer in self._core().model.layers]
            )
            out["lookahead_mean"] = round(float(bias.mean()), 3)
            out["lookahead_max"] = round(float(bias.max()), 3)
        return out

    def _attention(self, step: int, length: int) -> torch.Tensor | None:
        if self.args.lookahead:
            return None  # the learned biases are the anneal
        share = step / self.args.anneal_steps if self.args.anneal_steps else 1.0
        gen = torch.Generator().manual_seed(self.args.seed * 7919 + step)
        mask = causal_to_full_mask(length, share, gen)
        return None if mask is None else mask.to(self.device)


def adapt(args: AdaptArgs, progress: bool = True) -> dict:
    trainer = AdaptTrainer(args)
    out = trainer.fit(progress=progress)
    (Path(args.out) / "adapt_args.json").write_text(json.dumps(asdict(args), indent=2), encoding="utf-8")
    return out


def merged_state(run_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """The run's last checkpoint as a plain state dict (adapters merged) with its config and args."""
    from .lora import merge_lora

    state = torch.load(Path(run_dir) / "last.pt", map_location="cpu", weights_only=False)
    raw = dict(state["args"])
    args = AdaptArgs(**{k: v for k, v in raw.items() if k in AdaptArgs.__dataclass_fields__})
    cfg = ModelConfig.from_dict(state["config"])
    model = DreamModel(cfg)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if args.mode == "lora":
        from .lora import apply_lora

        apply_lora(model, args.lora_r, args.lora_alpha, 0.0)
    model.load_state_dict(state["model"], strict=True)
    merge_lora(model)
    plain = {k: v.detach().float() for k, v in model.state_dict().items()}
    meta = {"step": state["step"], "tokens_seen": state["tokens_seen"], "mode": args.mode, "args": raw}
    return cfg, plain, meta


def package_adaptation(
    run_dir: str | Path,
    base_dir: str | Path,
    out: str | Path,
    rank: int,
    name: str = "smollm2-diffusion",
    scale: float = 1.0,
) -> dict:
    """Write a run's adaptation in the shipped form (:mod:`diffucoder_lsp.model.adaptation`); returns its report.

    The change of every matrix is stored at ``rank`` (exact for a LoRA run of rank <= ``rank``), the mask token's
    embedding row whole, norms and biases as vector deltas; the manifest records the base's fingerprint.
    ``scale`` < 1 ships that share of the change (:func:`~diffucoder_lsp.model.adaptation.scale_adaptation`).
    """
    from safetensors.torch import load_file

    from ..model.adaptation import (
        make_adaptation,
        scale_adaptation,
        state_fingerprint,
        with_new_parameters,
        write_adaptation,
    )

    cfg, tuned, meta = merged_state(run_dir)
    base: dict[str, torch.Tensor] = {}
    for f in sorted(Path(base_dir).glob("*.safetensors")):
        base.update(load_file(str(f)))
    fingerprint = state_fingerprint(base)
    config = cfg.to_dict()
    base = with_new_parameters(base, config)
    if cfg.tie_word_embeddings:
        tuned.pop("lm_head.weight", None)
    tuned = {k: v for k, v in tuned.items() if k in base}
    tensors, report = make_adaptation(
        base, tuned, rank, exact_rows={"model.embed_tokens.weight": [cfg.mask_token_id]}
    )
    if scale != 1.0:
        tensors = scale_adaptation(tensors, scale)
    base_cfg = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    if "source" in base_cfg:
        config["source"] = base_cfg["source"]
    manifest = {
        "name": name,
        "base": {"fingerprint": fingerprint, "source": base_cfg.get("source", {})},
        "config": config,
        "rank": rank,
        "training": {**{k: meta[k] for k in ("step", "tokens_seen", "mode")}, "scale": float(scale)},
        "report": report,
    }
    write_adaptation(out, tensors, manifest)
    errors = [r["relative_error"] for r in report.values() if r.get("kind") == "low_rank"]
    size = (Path(out) / "adaptation.safetensors").stat().st_size
    return {
        "tensors": len(tensors),
        "bytes": size,
        "max_relative_error": max(errors, default=0.0),
        "mean_relative_error": sum(errors) / len(errors) if errors else 0.0,
        **manifest["training"],
    }
