"""``diffucoder train sft``: teach a checkpoint a repository with the masked diffusion loss (LoRA or full).

The loop is the pretraining loop's (same loss, schedule, atomic checkpoints), specialised for fine-tuning:

- data from :mod:`repo_data` (line / block / function-body holes of the repository's files, instruction pairs);
  the loss covers response tokens only (the hole and its pads, never the context);
- gradient accumulation over ``grad_accum`` micro-batches (gradients are synchronised only on the last one
  under DDP), so the effective batch does not depend on how many GPUs share it;
- an evaluation **before and after** on the held-out files: masked-diffusion loss on fixed batches with fixed
  noise (comparable numbers), single-line exact match / edit similarity with the engine (the intrinsic metric:
  200 lines by default, 95 % bootstrap intervals, mean fill length against the truth's, and the paired change
  after - before with its own interval), and HumanEval-Infilling pass@1 when ``humaneval`` > 0.
  ``eval_before.json`` / ``eval_after.json`` hold them, ``eval_{tag}_lines.jsonl`` every line's fill;
- the held-out split is written down (``heldout.txt``, ``heldout.jsonl``: rerun the evaluation on any model
  with ``diffucoder eval intrinsic --corpus OUT/heldout.jsonl``);
- the result is a merged HF-layout checkpoint (``OUT/model``) that ``load_model`` (``fill``, server, demo)
  reads, and with LoRA also the adapter alone (``OUT/adapter``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import BadInputError
from .coupled import MaskedHead
from .data import line_end_table
from .lora import export_checkpoint, merge_lora, save_adapter
from .losses import apply_noise, apply_ordered_noise, masked_diffusion_loss, sample_t
from .pretrain import Horizon
from .repo_data import RepoExampleSampler, load_repo, read_instructions, split_summary, write_heldout
from .tuning import (
    MetricsLog,
    check_distributed,
    eval_view,
    load_checkpoint,
    load_trainable,
    make_accelerator,
    make_optimizer,
    progress_bar,
    save_checkpoint,
    seed_everything,
)

log = logging.getLogger(__name__)


def head_diffusion_loss(head, ids, trainable, valid, generator, mask_id: int, ordered_fraction: float = 0.0):
    """The masked diffusion loss (:func:`losses.masked_diffusion_loss`) computed through a :class:`MaskedHead`.

    Same noise, weights and normalisation; the network runs inside ``head.forward`` so DDP/FSDP wrappers work.
    A share ``ordered_fraction`` of the rows is masked as left-to-right decoding sees a hole
    (:func:`losses.apply_ordered_noise`: its last ``t`` share), the rest at random.
    Returns (loss, unweighted mean cross-entropy of the masked tokens as a float).
    """
    trainable = trainable & valid
    t = sample_t(ids.shape[0], generator, device=ids.device)
    noisy, masked = apply_noise(ids, trainable, t, mask_id, generator)
    if ordered_fraction > 0.0:  # drawn only then, so runs without it see the noise they always saw
        rows = torch.rand(ids.shape[0], generator=generator, device=ids.device) < ordered_fraction
        o_noisy, o_masked = apply_ordered_noise(ids, trainable, t, mask_id)
        noisy = torch.where(rows[:, None], o_noisy, noisy)
        masked = torch.where(rows[:, None], o_masked, masked)
    logits = head(noisy, valid, masked)
    ce = torch.nn.functional.cross_entropy(logits, ids[masked], reduction="none")
    weights = (1.0 / t)[:, None].expand_as(masked)[masked]
    loss = (ce * weights).sum() / max(int(trainable.sum()), 1)
    return loss, float(loss.detach())


def head_causal_loss(head, ids, trainable, valid):
    """The left-to-right LM loss through a :class:`MaskedHead`: causal attention over the unmasked row, each
    trainable token (after the first position) predicted from the tokens before it, mean cross-entropy.

    Why: the editors and ``fill`` decode a line left to right, where a model with a learned lookahead reads
    almost only what comes before; this trains exactly that reading, with every trained token a target (the
    masked loss trains a random share of them). Returns (loss, its value as a float)."""
    targets = trainable & valid
    targets[:, 0] = False
    logits = head(ids, valid, targets, causal=True)
    loss = torch.nn.functional.cross_entropy(logits, ids[targets])
    return loss, float(loss.detach())


def heldout_lines(docs: list[dict], limit: int) -> list:
    """``limit`` lines of the held-out files, spread over them: each file gives an equal share, and where small
    files run out of lines the share grows until the limit is met (or every eligible line is taken)."""
    from ..eval.intrinsic import sample_lines

    per_file = max(2, -(-limit // max(1, len(docs))))
    samples = sample_lines(docs, limit=limit, per_file=per_file, seed=0)
    while len(samples) < limit and per_file < limit:
        per_file *= 2
        more = sample_lines(docs, limit=limit, per_file=per_file, seed=0)
        if len(more) == len(samples):
            break
        samples = more
    return samples


@dataclass
class SFTArgs:
    out: str
    repo: str | None = None
    instructions: str | None = None
    model: str | None = None
    languages: str = "python"
    holdout: list[str] = field(default_factory=list)
    holdout_fraction: float = 0.1
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 512
    window_fraction: float = 0.0  # share of rows that are plain windows with every token trained
    ordered_fraction: float = 0.0  # share of rows masked as left-to-right decoding sees a hole
    causal_fraction: float = 0.0  # share of batches trained as a left-to-right LM (head_causal_loss)
    lr: float | None = None  # default: 2e-4 with LoRA, 1e-5 full
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    threads: int | None = None
    ckpt_every: int = 50
    eval_batches: int = 4
    eval_lines: int = 200
    humaneval: int = 0
    export: str = "merged"  # merged | adapter | both | none
    export_dtype: str = "bfloat16"
    time_limit: float | None = None  # minutes


class SFTTrainer:
    def __init__(self, args: SFTArgs) -> None:
        from ..model.devices import resolve_device

        self.args = args
        if not args.repo and not args.instructions:
            raise BadInputError("give --repo, --instructions, or both")
        if args.threads:
            torch.set_num_threads(args.threads)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.acc = make_accelerator(args.device)
        check_distributed(self.acc, args.grad_accum)
        self.device = self.acc.device if self.acc else resolve_device(args.device)
        rank = self.acc.process_index if self.acc else 0
        self.is_main = rank == 0
        seed_everything(args.seed)

        self.lm, self.lora_cfg = load_trainable(
            args.model,
            self.device,
            lora=args.lora,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
        )
        self.core = self.lm.model
        tok = self.lm.tokenizer
        files = (
            load_repo(args.repo, args.languages, args.holdout or None, args.holdout_fraction)
            if args.repo
            else []
        )
        self.train_files = [f for f in files if not f.held_out]
        self.heldout_files = [f for f in files if f.held_out]
        self.split = split_summary(files) if files else {}
        if files and self.is_main:
            write_heldout(files, self.out)
        instr = read_instructions(args.instructions) if args.instructions else []
        line_end = line_end_table(tok)
        self.data = RepoExampleSampler(
            self.train_files,
            tok,
            args.seq_len,
            line_end,
            instructions=instr,
            window_fraction=args.window_fraction,
            seed=args.seed,
            rank=rank,
        )
        self.eval_data = (
            RepoExampleSampler(self.heldout_files, tok, args.seq_len, line_end, seed=args.seed + 1_000_003)
            if self.heldout_files
            else None
        )
        lr = args.lr if args.lr is not None else (2e-4 if args.lora else 1e-5)
        self.horizon = Horizon(args.steps)  # where --time-limit will stop the run: the progress bar's end
        self.opt, self.sched = make_optimizer(self.core, lr, args.weight_decay, args.warmup, args.steps)
        self.step = 0
        self.metrics = MetricsLog(self.out, self.is_main)
        if args.resume and (self.out / "last.pt").is_file():
            self.step = int(load_checkpoint(self.out / "last.pt", self.core, self.opt, self.sched)["step"])
        self.model = MaskedHead(self.core)
        if self.acc:
            self.model, self.opt = self.acc.prepare(self.model, self.opt)
        self.autocast = self.device.type == "cuda" and not self.acc
        self.line_records: dict = {}  # tag -> the intrinsic LineRecords of that evaluation

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def heldout_loss(self) -> dict:
        """Masked diffusion loss on fixed held-out batches with fixed noise: comparable across evaluations."""
        if self.eval_data is None or not self.args.eval_batches:
            return {}
        self.core.eval()
        tot = {"loss": 0.0, "ce": 0.0, "acc": 0.0}
        n = self.args.eval_batches
        for i in range(n):
            b = self.eval_data.batch(i, self.args.batch_size)
            gen = torch.Generator(device=self.device).manual_seed(777 + i)
            ids, tr, va = (torch.from_numpy(a).to(self.device) for a in (b.input_ids, b.trainable, b.valid))
            with self._autocast():
                _, st = masked_diffusion_loss(self.core, ids, tr, va, generator=gen)
            tot["loss"] += st.loss / n
            tot["ce"] += st.ce / n
            tot["acc"] += st.accuracy / n
        self.core.train()
        return {f"heldout_{k}": round(v, 5) for k, v in tot.items()}

    def evaluate(self, tag: str, progress: bool = False) -> dict:
        """Held-out loss, intrinsic exact match on held-out lines, HumanEval-Infilling when asked."""
        from ..engine.options import EDITOR_BLOCK_SIZE, SamplingOptions
        from ..eval.intrinsic import evaluate_lines, records_as_dicts, summarize_lines
        from ..eval.runner import model_fill_fn, token_counter

        res: dict = {"tag": tag, "step": self.step, **self.heldout_loss()}
        self.core.eval()
        view = eval_view(self.lm, self.core)
        # decoded as the editor decodes (context cache, its blocks, greedy) and cut at the line's end as an
        # editor shows a one-line suggestion: 200 lines in minutes, not a quarter of an hour, on a CPU
        options = SamplingOptions(temperature=0.0, seed=0, block_size=EDITOR_BLOCK_SIZE)
        fill = model_fill_fn(view, options, cache=True, single_line=True)
        if self.args.eval_lines and self.heldout_files:
            docs = [f.as_doc() for f in self.heldout_files]
            samples = heldout_lines(docs, self.args.eval_lines)
            recs = evaluate_lines(
                samples, fill, count_tokens=token_counter(view), progress=progress and self.is_main
            )
            s = summarize_lines(recs)
            res.update({f"intrinsic_{k}": v for k, v in s.items()})
            self.line_records[tag] = recs
            if self.is_main:
                with open(self.out / f"eval_{tag}_lines.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in records_as_dicts(recs))
        if self.args.humaneval:
            from ..eval.humaneval_infill import build_tasks
            from ..eval.runner import evaluate_tasks, summarize

            tasks = build_tasks("single-line", limit=self.args.humaneval)
            recs = evaluate_tasks(tasks, fill, count_tokens=token_counter(view), progress=False)
            res["humaneval_infill"] = summarize(recs)
        self.core.train()
        if self.is_main:
            (self.out / f"eval_{tag}.json").write_text(json.dumps(res, indent=2))
        return res

    # ------------------------------------------------------------------------------------------- training
    def _autocast(self):
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict:
        a = self.args
        self.model.train()
        tokens, targets, stats_loss = 0, 0, 0.0
        for k in range(a.grad_accum):
            micro = self.step * a.grad_accum + k
            b = self.data.batch(micro, a.batch_size)
            gen = torch.Generator(device=self.device).manual_seed(a.seed * 1_000_003 + micro)
            ids, tr, va = (torch.from_numpy(x).to(self.device) for x in (b.input_ids, b.trainable, b.valid))
            sync = (
                self.acc.no_sync(self.model)
                if (self.acc and k < a.grad_accum - 1)
                else contextlib.nullcontext()
            )
            with sync:
                with self.acc.autocast() if self.acc else self._autocast():
                    causal = (
                        a.causal_fraction > 0.0 and float(torch.rand(1, generator=gen)) < a.causal_fraction
                    )
                    if causal:
                        loss, value = head_causal_loss(self.model, ids, tr, va)
                    else:
                        loss, value = head_diffusion_loss(
                            self.model, ids, tr, va, gen, self.lm.tokenizer.mask_id, a.ordered_fraction
                        )
                loss = loss / a.grad_accum
                if self.acc:
                    self.acc.backward(loss)
                else:
                    loss.backward()
            tokens += b.num_tokens  # every token the network read, as pretraining counts them
            targets += int(b.trainable.sum())
            stats_loss += value / a.grad_accum
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.acc:
            gnorm = self.acc.clip_grad_norm_(params, a.grad_clip)
        else:
            gnorm = torch.nn.utils.clip_grad_norm_(params, a.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "step": self.step,
            "loss": stats_loss,
            "gnorm": float(gnorm),
            "lr": self.sched.get_last_lr()[0],
            "tokens": tokens,
            "target_tokens": targets,
        }

    def save(self) -> None:
        if self.is_main:
            save_checkpoint(
                self.out / "last.pt", self.core, self.opt, self.sched, self.step, {"args": asdict(self.args)}
            )

    def fit(self, progress: bool = True) -> dict:
        a = self.args
        before = (
            self.evaluate("before", progress)
            if self.step == 0
            else json.loads(
                (self.out / "eval_before.json").read_text()
                if (self.out / "eval_before.json").is_file()
                else "{}"
            )
        )
        self.metrics.write(
            {
                "event": "start",
                "step": self.step,
                "train_files": len(self.train_files),
                "heldout_files": len(self.heldout_files),
                "split": self.split,
                "args": asdict(a),
                **before,
            }
        )
        bar = progress_bar(a.steps, self.step, progress and self.is_main, "sft")
        start = time.monotonic()
        reason = "steps"
        while self.step < a.steps:
            t0 = time.monotonic()
            m = self.train_step()
            step_s = time.monotonic() - t0
            m["tok_s"] = round(m["tokens"] / max(1e-9, step_s), 1)
            self.horizon.fit(self.step, step_s, time.monotonic() - start, (a.time_limit or 0) * 60)
            self.metrics.write(m)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tok_s']:.0f}", refresh=False)
                self.horizon.show(bar)
            if a.ckpt_every and self.step % a.ckpt_every == 0:
                self.save()
            if a.time_limit and time.monotonic() - start > a.time_limit * 60:
                reason = "time_limit"
                break
        if bar is not None:
            bar.close()
        self.save()
        after = self.evaluate("after", progress)
        exported = self.export()
        summary = {
            "event": "end",
            "reason": reason,
            "step": self.step,
            "before": before,
            "after": after,
            "change": self.change(),
            "exported": exported,
            "elapsed_s": round(time.monotonic() - start, 1),
        }
        self.metrics.write(summary)
        return summary

    def change(self) -> dict:
        """The paired change of the held-out line metrics, after - before (``eval.intrinsic.compare_lines``);
        after a resume the before fills come from ``eval_before_lines.jsonl``."""
        from ..eval.intrinsic import LineRecord, compare_lines

        after = self.line_records.get("after")
        before = self.line_records.get("before")
        path = self.out / "eval_before_lines.jsonl"
        if before is None and path.is_file():
            with open(path, encoding="utf-8") as f:
                before = [LineRecord(**json.loads(line)) for line in f if line.strip()]
        if not after or not before or len(before) != len(after):
            return {}
        return compare_lines(before, after)

    def export(self) -> dict:
        """Write the adapter and/or the merged checkpoint (the training model is merged in place at the end)."""
        a = self.args
        out: dict = {}
        if not self.is_main or a.export == "none":
            return out
        meta = {"base": str(self.lm.path), "step": self.step, "sft_args": asdict(a)}
        if self.lora_cfg is not None and a.export in ("adapter", "both"):
            out["adapter"] = str(
                save_adapter(self.core, self.lora_cfg, self.out / "adapter", str(self.lm.path))
            )
        if a.export in ("merged", "both") or (a.export == "adapter" and self.lora_cfg is None):
            merged = merge_lora(self.core)
            dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[
                a.export_dtype
            ]
            out["model"] = str(export_checkpoint(merged, self.lm.path, self.out / "model", dtype, meta))
        return out


def run_sft(args: SFTArgs, progress: bool = True) -> dict:
    return SFTTrainer(args).fit(progress=progress)
