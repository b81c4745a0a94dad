"""Masked-diffusion pretraining of a small DiffuCoder-shaped model, resumable and reproducible.

Design points, each for a reason:

- **Batches are a pure function of (seed, step, rank)** (see ``data.BatchSampler``) and so is the mask noise
  (a ``torch.Generator`` seeded per step). A checkpoint therefore needs only the model, optimizer, scheduler
  and step to continue exactly as an uninterrupted run would; RNG states are saved as well for anything that
  still draws from the global generators.
- **Checkpoints are atomic** (write ``last.pt.tmp`` then ``os.replace``): a run killed mid-save keeps the old
  checkpoint intact.
- **Schedule**: linear warmup then cosine decay to 10 % of the peak over ``steps``; ``time_limit`` stops early
  and saves, so a run sized for N steps that is cut short still leaves a usable checkpoint.
- **accelerate** is used when installed (one or many devices); on a plain CPU install the loop runs without it.
- **bf16 autocast** on CUDA, and on CPU when requested (``autocast="auto"`` enables it on CPU only when the
  CPU has native bf16 matmul, which was measured ~4x faster than fp32 on the training machine). The master
  weights and optimizer state stay fp32; the exported checkpoint is bf16.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model.config import ModelConfig
from ..model.network import DreamModel
from ..model.tokenizer import EOS, MASK, CodeTokenizer
from .data import BatchSampler, line_end_table, tokenize_split
from .losses import masked_diffusion_loss

log = logging.getLogger(__name__)

# Named model shapes. "small" is the shipped default: ~10.5M params with an 8192 vocabulary (~21 MB in bf16),
# deep and narrow because at a CPU budget of ~20-40M training tokens a smaller model is closer to
# compute-optimal and is also faster at inference. "base" (~15.7M) is the next size up, for a GPU run.
MODEL_SHAPES: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "small": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "base": dict(
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
    ),
}


@dataclass
class PretrainArgs:
    corpus: str
    out: str
    config: str = "small"
    steps: int = 10000
    batch_size: int = 16
    seq_len: int = 512
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    infill_fraction: float = 0.5
    seed: int = 0
    resume: bool = False
    time_limit: float | None = None  # minutes
    stop_at: int | None = None  # stop (and save) at this step; the schedule is still defined by ``steps``
    threads: int | None = None
    autocast: str = "auto"  # auto | bf16 | off
    eval_every: int = 250
    eval_batches: int = 8
    ckpt_minutes: float = 5.0
    ckpt_every: int | None = None  # steps; in addition to ckpt_minutes
    prefetch: bool | None = None  # build the next batch in a thread during the step; None = on a GPU only
    extra: dict = field(default_factory=dict)


def model_config(spec: str, tok: CodeTokenizer, max_positions: int = 4096) -> ModelConfig:
    """A named shape (``tiny``/``small``) or a JSON file of ModelConfig fields, fitted to the tokenizer's ids."""
    if spec in MODEL_SHAPES:
        fields = dict(MODEL_SHAPES[spec])
    else:
        fields = json.loads(Path(spec).read_text(encoding="utf-8"))
    fields.setdefault("max_position_embeddings", max_positions)
    fields.setdefault("rope_theta", 10000.0)
    fields.setdefault("rms_norm_eps", 1e-6)
    fields.setdefault("tie_word_embeddings", False)
    fields.update(
        vocab_size=fields.get("vocab_size", tok.vocab_size),
        mask_token_id=tok.mask_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
        bos_token_id=tok.eos_id,
    )
    return ModelConfig(**fields)


def init_weights(model: DreamModel, seed: int) -> None:
    """GPT-style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers), zero biases."""
    gen = torch.Generator().manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                std = (
                    0.02 / math.sqrt(2 * n_layers)
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else 0.02
                )
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def load_tokenizer(corpus: str | Path) -> CodeTokenizer:
    from tokenizers import Tokenizer

    path = Path(corpus) / "tokenizer.json"
    if not path.is_file():
        from ..errors import BadInputError

        raise BadInputError(f"no tokenizer.json in {corpus}: run `diffucoder train tokenizer` first")
    tok = Tokenizer.from_file(str(path))
    eos = tok.token_to_id(EOS)
    return CodeTokenizer(tok, tok.token_to_id(MASK), eos, eos)


def _use_autocast(mode: str, device: torch.device) -> bool:
    if mode == "off":
        return False
    if mode == "bf16" or device.type == "cuda":
        return True
    # CPU: native bf16 matmul (AMX / AVX512-BF16) makes autocast a large win; without it bf16 is emulated.
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Horizon:
    """The step a run will end at: ``steps``, or sooner when ``--time-limit`` will stop it first (the progress
    bar's total, so its ETA honours the limit: a ten-minute CPU run of 200 planned steps stops after ~40).
    ``fit`` re-estimates the end from the median time of the steps so far (the first one, with its warm-up
    costs, weighs less that way)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.total = steps
        self._times: list[float] = []

    def fit(self, step: int, step_s: float, elapsed_s: float, limit_s: float | None) -> int:
        """After a step that took ``step_s`` (``elapsed_s`` since the loop started): the new end step."""
        if not limit_s:
            return self.total
        self._times.append(step_s)
        typical = sorted(self._times)[len(self._times) // 2]
        left = max(0.0, limit_s - elapsed_s) / max(typical, 1e-9)
        self.total = max(step + 1, min(self.steps, step + math.ceil(left)))
        return self.total

    def show(self, bar, per: int = 1) -> None:
        """Make a progress bar's total (and so its ETA) this end, in the bar's own steps of ``per`` schedule
        steps: a run stopped by ``--time-limit`` showed minutes left when it stopped."""
        if bar is None:
            return
        total = math.ceil(self.total / per)
        if total != bar.total:
            bar.total = total
            bar.refresh()


class Trainer:
    """Owns the model, optimizer, data and checkpointing of one run directory."""

    def __init__(self, args: PretrainArgs) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            from accelerate import Accelerator
        except ImportError:
            Accelerator = None
        self.accelerator = Accelerator(mixed_precision="no") if Accelerator is not None else None
        self.device = self.accelerator.device if self.accelerator else torch.device("cpu")
        rank = self.accelerator.process_index if self.accelerator else 0
        self.is_main = rank == 0
        self.autocast = _use_autocast(args.autocast, self.device)

        self.tok = self._tokenizer()
        self.cfg = self._config()
        line_end = line_end_table(self.tok)
        train_cache = tokenize_split(args.corpus, "train", self.tok)
        valid_cache = tokenize_split(args.corpus, "valid", self.tok)
        self.train_data = BatchSampler(
            train_cache,
            args.seq_len,
            self.tok.eos_id,
            line_end,
            args.infill_fraction,
            seed=args.seed,
            rank=rank,
        )
        # Validation: fixed batches (seed offset) so successive evaluations are comparable.
        self.valid_data = BatchSampler(
            valid_cache,
            args.seq_len,
            self.tok.eos_id,
            line_end,
            args.infill_fraction,
            seed=args.seed + 1_000_003,
            rank=0,
        )

        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed)
        self.model = self._build_model()
        trained = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self._param_groups(trained),
            lr=args.lr,
            betas=(0.9, 0.95),
            eps=1e-8,
            # on a GPU one kernel updates every parameter instead of a few kernels per tensor
            fused=self.device.type == "cuda" or None,
        )
        # The next batch is built (numpy, ~10 ms for 128 x 512 tokens on one core) while the GPU runs the step;
        # batches are a function of the step, so what a step trains on is the same either way. On a CPU the
        # thread would take cores from the step itself.
        prefetch = args.prefetch if args.prefetch is not None else self.device.type == "cuda"
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="batches") if prefetch else None
        self._pending: tuple[int, Future] | None = None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, args.warmup, args.steps, args.min_lr_ratio)
        )
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        if args.resume and (self.out / "last.pt").is_file():
            self.load(self.out / "last.pt")
        if self.accelerator:
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        else:
            self.model.to(self.device)

    # ---- what a subclass (train/adapt.py) replaces ---------------------------------------------------------
    def _tokenizer(self) -> CodeTokenizer:
        return load_tokenizer(self.args.corpus)

    def _config(self) -> ModelConfig:
        return model_config(self.args.config, self.tok)

    def _param_groups(self, trained: list) -> list[dict]:
        """Optimizer groups of the trained (name, parameter) pairs: matrices decay, vectors do not."""
        decay = [p for n, p in trained if p.ndim >= 2]
        no_decay = [p for n, p in trained if p.ndim < 2]
        return [
            {"params": decay, "weight_decay": self.args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def _build_model(self) -> DreamModel:
        model = DreamModel(self.cfg)
        init_weights(model, self.args.seed)
        return model

    def _attention(self, step: int, length: int) -> torch.Tensor | None:
        """An attention restriction for the training step ``step`` (None: full attention, as DiffuCoder)."""
        return None

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _core(self) -> DreamModel:
        return self.accelerator.unwrap_model(self.model) if self.accelerator else self.model

    def save(self) -> Path:
        path = self.out / "last.pt"
        if not self.is_main:
            return path
        state = {
            "model": self._core().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "data_position": self.step,  # batches are a function of (seed, step, rank)
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "config": self.cfg.to_dict(),
            "args": asdict(self.args),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        _atomic_save(state, path)
        return path

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.elapsed = float(state.get("elapsed", 0.0))
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        log.info("resumed from %s at step %d", path, self.step)

    # ---- steps -------------------------------------------------------------------------------------------
    def _tensors(self, batch):
        to = lambda a: torch.from_numpy(a).to(self.device)  # noqa: E731
        return to(batch.input_ids), to(batch.trainable), to(batch.valid)

    def _loss(self, batch, gen, step: int | None = None):
        ids, trainable, valid = self._tensors(batch)
        valid_arg = None if bool(valid.all()) else valid
        attn = self._attention(step, ids.shape[1]) if step is not None else None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return masked_diffusion_loss(self.model, ids, trainable, valid_arg, generator=gen, attn_mask=attn)

    def _train_batch(self, step: int):
        """The batch of ``step``, from the prefetcher when it built it; then starts on the next one."""
        if self._prefetcher is None:
            return self.train_data.batch(step, self.args.batch_size)
        if self._pending is not None and self._pending[0] == step:
            batch = self._pending[1].result()
        else:
            batch = self.train_data.batch(step, self.args.batch_size)
        upcoming = self._prefetcher.submit(self.train_data.batch, step + 1, self.args.batch_size)
        self._pending = (step + 1, upcoming)
        return batch

    def train_step(self) -> dict:
        """One optimizer step at ``self.step``; returns its metrics."""
        self.model.train()
        batch = self._train_batch(self.step)
        gen = torch.Generator(device=self.device).manual_seed(self.args.seed * 1_000_003 + self.step)
        loss, stats = self._loss(batch, gen, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator:
            self.accelerator.backward(loss)
            gnorm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
        else:
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.args.grad_clip
            )
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        n_proc = self.accelerator.num_processes if self.accelerator else 1
        self.tokens_seen += batch.num_tokens * n_proc
        return {
            "step": self.step,
            "loss": stats.loss,
            "ce": stats.ce,
            "acc": stats.accuracy,
            "gnorm": float(gnorm),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens": batch.num_tokens,
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss on fixed batches with fixed noise: comparable from one evaluation to the next."""
        self.model.eval()
        tot = {"loss": 0.0, "ce": 0.0, "acc": 0.0}
        for i in range(self.args.eval_batches):
            batch = self.valid_data.batch(i, self.args.batch_size)
            gen = torch.Generator(device=self.device).manual_seed(777 + i)
            _, stats = self._loss(batch, gen)
            for k, v in (("loss", stats.loss), ("ce", stats.ce), ("acc", stats.accuracy)):
                tot[k] += v / self.args.eval_batches
        return {f"val_{k}": v for k, v in tot.items()}

    def _log(self, record: dict) -> None:
        if self.is_main:
            with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def fit(self, progress: bool = True) -> dict:
        """Train until ``steps`` or the time limit; checkpoint periodically and at the end."""
        args = self.args
        start = time.monotonic()
        elapsed0 = self.elapsed
        last_ckpt = start
        limit_s = args.time_limit * 60 if args.time_limit else None
        bar = None
        if progress and self.is_main:
            try:
                from tqdm import tqdm

                bar = tqdm(
                    total=args.steps,
                    initial=self.step,
                    file=sys.stderr,
                    dynamic_ncols=True,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0,
                )
            except ImportError:
                bar = None
        if self.step == 0:
            (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
            self.tok.save(self.out / "tokenizer.json")
            self._log(
                {
                    "event": "start",
                    "params": sum(p.numel() for p in self._core().parameters()),
                    "autocast_bf16": self.autocast,
                    "args": asdict(args),
                }
            )
            if (
                args.eval_every and args.eval_batches
            ):  # where the run starts: an adaptation's base is no random init
                self._log({"step": 0, **self.evaluate(), "tokens_seen": 0})
        reason = "steps" if args.stop_at is None or args.stop_at >= args.steps else "stop_at"
        window_tokens, window_start = 0, time.monotonic()
        last_step = args.steps if args.stop_at is None else min(args.steps, args.stop_at)
        # only for the progress bar: the schedule keeps --steps, so a resumed run matches
        horizon = Horizon(last_step)
        while self.step < last_step:
            t0 = time.monotonic()
            m = self.train_step()
            horizon.fit(self.step, time.monotonic() - t0, time.monotonic() - start, limit_s)
            window_tokens += m["tokens"]
            now = time.monotonic()
            self.elapsed = elapsed0 + (now - start)
            tps = window_tokens / max(1e-9, now - window_start)
            if now - window_start > 60:
                window_tokens, window_start = 0, now
            m.update(tok_s=round(tps, 1), tokens_seen=self.tokens_seen, elapsed=round(self.elapsed, 1))
            if bar is not None:
                bar.update(1)
                horizon.show(bar)
                bar.set_postfix(
                    loss=f"{m['loss']:.3f}", ce=f"{m['ce']:.3f}", tok_s=f"{tps:.0f}", refresh=False
                )
            if self.step % 10 == 0 or self.step == 1:
                self._log(m)
            if args.eval_every and self.step % args.eval_every == 0:
                v = self.evaluate()
                self._log({"step": self.step, **v, "tokens_seen": self.tokens_seen})
                log.info("step %d %s", self.step, v)
            if (now - last_ckpt > args.ckpt_minutes * 60) or (
                args.ckpt_every and self.step % args.ckpt_every == 0
            ):
                self.save()
                last_ckpt = time.monotonic()
            if limit_s is not None and time.monotonic() - start > limit_s:
                reason = "time_limit"
                break
        if bar is not None:
            bar.close()
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=False, cancel_futures=True)
            self._prefetcher, self._pending = None, None
        final = self.evaluate() if args.eval_batches else {}
        self.save()
        summary = {
            "event": "end",
            "reason": reason,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed": round(self.elapsed, 1),
            **final,
        }
        self._log(summary)
        return summary


def pretrain(args: PretrainArgs, progress: bool = True) -> dict:
    return Trainer(args).fit(progress=progress)


def export(run_dir: str | Path, out: str | Path, max_shard_bytes: int = 16 * 2**20 - 2**16) -> Path:
    """Write ``run_dir/last.pt`` as a HF-layout bf16 checkpoint (config.json, safetensors shards, tokenizer)."""
    from ..model.tiny import write_sharded_safetensors, write_side_files

    run_dir, out = Path(run_dir), Path(out)
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()
    weights = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in state["model"].items()}
    total = sum(v.numel() * v.element_size() for v in weights.values())
    shards = max(1, math.ceil(total / max_shard_bytes))
    while True:
        write_sharded_safetensors(out, weights, shards)
        files = list(out.glob("model*.safetensors"))
        if all(f.stat().st_size < max_shard_bytes for f in files) or shards > len(weights):
            break
        for f in files:
            f.unlink()
        shards += 1
    cfg = dict(state["config"])
    cfg["torch_dtype"] = "bfloat16"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    tok.save(str(out / "tokenizer.json"))
    write_side_files(out, cfg, tok)
    meta = {"step": state["step"], "tokens_seen": state["tokens_seen"], "train_args": state["args"]}
    (out / "training_state.json").write_text(json.dumps(meta, indent=2))
    return out
