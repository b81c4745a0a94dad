"""What SFT and GRPO share: a trainable copy of a checkpoint, accelerate, optimizer, checkpoints, logging.

- **Model**: loaded with :func:`load_model` (so any folder or Hub id the rest of the tool reads), in fp32 for
  full fine-tuning and on CPU; with LoRA on a GPU the frozen base stays bf16 and only the adapter is fp32.
- **accelerate** when installed: the same code runs on CPU, one GPU, or ``accelerate launch`` across GPUs and
  nodes (DDP, FSDP, DeepSpeed configs in ``examples/accelerate``). Mixed precision bf16 on CUDA.
- **Checkpoints** (``last.pt``) hold only what training changes (adapter weights or the full state), the
  optimizer, scheduler, step and RNG states; they are written to a temp file and renamed (atomic), so a run
  killed mid-save resumes from the previous one.
- **Schedule**: warmup then cosine to ``min_lr_ratio`` of the peak over ``--steps``, the pretraining schedule
  (:func:`pretrain.lr_lambda`). A ``--time-limit`` that stops the run first does not move its end: fitted to a
  10-minute CPU run on click (43 steps, the rate decayed to a tenth) the held-out lines gained less (edit
  similarity +2.5 against +4.2, masked-token accuracy 44.4 against 46.6 %) than with the rate kept near its peak;
  these runs are short enough that learning more beats settling. The time limit sets the progress bar's end
  (:class:`pretrain.Horizon`).
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError
from ..model.loading import LoadedModel, load_model
from .lora import apply_lora, has_lora
from .pretrain import _atomic_save, lr_lambda

log = logging.getLogger(__name__)


def make_accelerator(device: str = "auto"):
    """An ``Accelerator`` (bf16 mixed precision on CUDA), or None when accelerate is not installed.

    Gradient accumulation is done by the callers (micro-batches, ``no_sync`` on all but the last), so the
    accelerator is built with 1 step: its ``backward`` would otherwise divide the loss a second time.
    """
    try:
        from accelerate import Accelerator
    except ImportError:
        log.info("accelerate is not installed: single-process training")
        return None
    if device == "cpu":  # an explicit --device cpu wins over a visible GPU
        return Accelerator(cpu=True, mixed_precision="no")
    mp = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mp)


def check_distributed(acc, grad_accum: int = 1) -> None:
    """Refuse setups whose sharding this trainer cannot serve, with the way out.

    Evaluation, GRPO rollouts (the engine's sampler) and the merged export run the unwrapped network, so every
    process needs whole weights: DDP and DeepSpeed ZeRO-1/2 keep them, FSDP and ZeRO-3 shard them. DeepSpeed
    also steps its optimizer inside every ``backward``, so the trainer's micro-batch accumulation cannot apply.
    """
    if acc is None:
        return
    kind = str(acc.distributed_type)
    sharded = "FSDP" in kind
    if "DEEPSPEED" in kind:
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        sharded = getattr(plugin, "zero_stage", 0) == 3
        if grad_accum > 1:
            raise BadInputError("under DeepSpeed pass --grad-accum 1 and raise --batch-size instead")
    if sharded:
        raise BadInputError(
            "FSDP / ZeRO-3 shard the weights, but evaluation, GRPO rollouts and the merged export need whole "
            "weights on every process: use DDP (examples/accelerate/multi_gpu.yaml) or DeepSpeed ZeRO-2 "
            "(examples/accelerate/deepspeed_zero2.yaml)"
        )


def load_trainable(
    model: str | None,
    device: torch.device,
    *,
    lora: bool,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    base_dtype: str = "auto",
):
    """(LoadedModel, lora config or None): the checkpoint on ``device`` with the chosen parameters trainable."""
    if base_dtype == "auto":
        base_dtype = "bf16" if (lora and device.type == "cuda") else "fp32"
    lm = load_model(model, device=str(device), dtype=base_dtype)
    core = lm.model
    cfg = None
    if lora:
        cfg = apply_lora(core, lora_r, lora_alpha, lora_dropout)
        for name, p in core.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
    else:
        core.requires_grad_(True)
    core.train()
    return lm, cfg


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    warmup: int,
    steps: int,
    min_ratio=0.1,
):
    """AdamW with linear warm-up and a cosine decay to ``min_ratio`` at ``steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup, steps, min_ratio))
    return opt, sched


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors training changes: adapter weights with LoRA, else the full state dict."""
    if has_lora(model):
        return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, extra: dict | None = None) -> None:
    state = {
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        **(extra or {}),
    }
    _atomic_save(state, path)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore a :func:`save_checkpoint` file into freshly built model/optimizer/scheduler; returns the state."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing, unexpected = model.load_state_dict(state["trainable"], strict=False)
    if unexpected or (not has_lora(model) and missing):
        raise RuntimeError(
            f"checkpoint {path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    log.info("resumed from %s at step %d", path, state["step"])
    return state


def eval_view(lm: LoadedModel, core: torch.nn.Module) -> LoadedModel:
    """A LoadedModel around the (possibly adapted) training network, for the engine and the eval harness."""
    return replace(lm, model=core)


class MetricsLog:
    """Append-only ``metrics.jsonl`` on the main process."""

    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.path = out / "metrics.jsonl"
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=float) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(ln) for ln in self.path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
