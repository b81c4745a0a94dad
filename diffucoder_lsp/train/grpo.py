"""``diffucoder train grpo``: coupled-GRPO with unit-test rewards, as DiffuCoder trains its cpGRPO model.

One step:

1. take ``prompts_per_step`` tasks: the next ones of a shuffled pass over all tasks, a new shuffle each pass (a
   pure function of seed and step, so a resumed run continues the same sequence). Every task comes once per
   pass, so the reward curve's stretches hold the same tasks and a rise is the model's, not the draw's; lay
   each out with the engine's infill canvas (``prefix + hole + suffix``, context cut to fit);
2. **rollouts**: ``group`` copies of every canvas in one padded batch, denoised by the engine's sampler
   (:func:`engine.sampler.denoise`, with the context cache as fill decodes) one position at a time from the
   left; a row stops once it has left its function (:func:`scope_settle`); every hole token (code, then
   eos/pad) is part of the completion, as in the paper;
3. **rewards** in the sandbox, in parallel (:mod:`rewards`); a failure gives 0 tests passed, never an error;
4. leave-one-out advantages inside each group;
5. per-token log-prob estimates with the coupled masks (or the single-mask baseline) drawn from per-row seeds
   shared by the old-policy, reference and current passes; PPO-clipped ratio + beta * k3 KL; ``inner_steps``
   optimizer steps per rollout batch (the old policy is the one that made the rollouts).

Reference model: with LoRA it is the base model (adapters switched off: no second copy in memory); with full
fine-tuning a frozen copy, re-synchronised with the policy every ``ref_sync`` steps (the paper uses 64).

Every step logs reward, KL, clip fraction, completion length, loss to ``metrics.jsonl``; ``reward.png`` plots
the reward curve (skipped with a log line when matplotlib is missing).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.cache import CachedContextDenoiser
from ..engine.denoiser import FullCanvasDenoiser
from ..engine.infill import DEFAULT_MARKER, prepare_infill, settle_rows
from ..engine.sampler import SamplingOptions, denoise, run_to_end
from ..errors import BadInputError
from .coupled import MaskedHead, estimate_logprobs, grpo_loss, leave_one_out, plan_masks
from .lora import adapters_disabled, export_checkpoint, merge_lora, save_adapter
from .pretrain import Horizon
from .repo_tasks import Task
from .reward_curve import curve_summary, plot_rewards, revisit_summary
from .rewards import extract_code, jsonl_rewards, repo_rewards, reward_summary
from .tuning import (
    MetricsLog,
    check_distributed,
    load_checkpoint,
    load_trainable,
    make_accelerator,
    make_optimizer,
    progress_bar,
    save_checkpoint,
    seed_everything,
)

log = logging.getLogger(__name__)

# reward_fn(tasks of the rows, completion token ids per row, completion texts) -> one reward per row
RewardFn = Callable[[list[Task], list[list[int]], list[str]], list[float]]


@dataclass
class GRPOArgs:
    out: str
    model: str | None = None
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    steps: int = 100
    prompts_per_step: int = 2
    group: int = 8
    completion_len: int = 48  # the hole `fill --length auto` opens
    sampling_steps: int | None = None  # default: the hole's length (one token per step, as fill decodes)
    temperature: float = 0.8
    # blocks of masked positions revealed in order, as fill and the editor decode: without them the sampler's
    # most confident positions are the end pads of a hole with nothing after it, and every rollout came out
    # empty. One position at a time (the editor's default) lets a rollout stop where its function ends
    # (:func:`scope_settle`): the steps after it would only write what the scoring cuts
    block_size: int | None = 1
    top_p: float | None = None
    rollout_cache: bool = True  # context key/value cache in rollouts (False: a full-canvas pass per step)
    alg: str = "entropy"
    max_context_tokens: int = 1024
    estimator: str = "coupled"  # coupled | decoupled
    lr: float | None = None  # default 1e-6 full, 1e-5 LoRA (the paper: 1e-6, full)
    warmup: int = 0
    clip_eps: float = 0.5
    beta: float = 0.01
    ref_sync: int = 64
    inner_steps: int = 1
    micro_batch: int | None = None
    grad_clip: float = 1.0
    test_weight: float = 1.0
    format_weight: float = 0.1
    workers: int = 2
    test_timeout: float = 5.0
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    threads: int | None = None
    ckpt_every: int = 20
    export: str = "merged"
    export_dtype: str = "bfloat16"
    plot: bool = True
    time_limit: float | None = None


# steps watched for groups whose completions all got the same reward (no advantage, no gradient)
FLAT_WATCH_STEPS = 3


class FlatRewardWatch:
    """Says once, early, when GRPO cannot learn: a group whose rewards are all equal has zero advantages, so a
    run whose first steps are all such groups (typically every completion failing every test) trains nothing.
    That was the default experience on the bundled model (reward 0.000 on every rollout) with no hint why."""

    def __init__(self, steps: int = FLAT_WATCH_STEPS) -> None:
        self.steps, self.seen, self.all_flat, self.done = steps, 0, True, False
        self.rewards: list[float] = []

    def observe(self, m: dict) -> str | None:
        if self.done:
            return None
        self.seen += 1
        self.all_flat &= m.get("flat_groups", 0) == m.get("groups", 1)
        self.rewards.append(float(m.get("reward", 0.0)))
        if self.seen < self.steps:
            return None
        self.done = True
        if not self.all_flat:
            return None
        mean = sum(self.rewards) / len(self.rewards)
        head = (
            f"every group of completions got one reward in the first {self.steps} steps (mean {mean:.3f}): "
        )
        if mean <= 1e-9:  # not one completion even parsed: sampling is too wild or the holes too long
            return head + (
                "no completion parsed or passed a test, so nothing is learned. Try a lower --temperature, "
                "a shorter --completion-len, --sampling-steps equal to it (one token per step), easier tasks "
                "(examples/grpo_tasks.jsonl), or check that each task's tests pass with a right solution"
            )
        return head + (
            "no advantage, so nothing is learned. When every completion passes, use harder tasks; otherwise try a "
            "higher --temperature or a larger --group for more varied completions"
        )


def hole_prefix(t: Task) -> str:
    """The text before a task's hole on the canvas, and in the program its completion is scored in.

    A prompt that ends in a bare newline splits the token a byte-level BPE writes there (newline + the next
    line's indentation), so the model is asked for a token it almost never saw start a line: on the bundled
    model every rollout of the example tasks came out empty. The hole takes that newline instead, and the model
    writes it with the indentation, as it would have read the file.
    """
    if not t.chat and t.prefix.endswith("\n"):
        return t.prefix[:-1]
    return t.prefix


def scope_cut(prefix: str, completion: str) -> str:
    """The completion up to the end of the block the prefix leaves open, as an editor cuts a suggestion.

    A JSONL task's prompt ends inside a function (its signature and docstring); what the model writes after the
    body (a next ``def`` half-written into the hole's last tokens, stray text at the left margin) is not the
    answer, and scoring it made a right body a syntax error. The body ends at the first non-blank line indented
    no deeper than the prompt's last ``def`` / ``class`` line.
    """
    header = None
    for line in reversed(prefix.splitlines()):
        stripped = line.lstrip()
        if stripped.startswith(("def ", "async def ", "class ")):
            header = len(line) - len(stripped)
            break
    if header is None:
        return completion
    lines = completion.splitlines(keepends=True)
    starts_mid_line = bool(prefix) and not prefix.endswith("\n")
    for i, line in enumerate(lines):
        if i == 0 and starts_mid_line:
            continue
        if line.strip() and len(line) - len(line.lstrip()) <= header:
            return "".join(lines[:i])
    return completion


def scope_settled(prefix: str, written: str) -> bool:
    """True when :func:`scope_cut` cuts ``written`` inside it, as it cuts every text that starts with it."""
    return len(scope_cut(prefix, written)) < len(written.rstrip(" \t"))


def scope_settle(tok, canvases: list, prefixes: list[str | None]):
    """The sampler's ``settle`` for a rollout batch (:func:`~diffucoder_lsp.engine.infill.settle_rows`):
    ``prefixes[r]`` is the prompt's text before row r's hole for a row cut by :func:`scope_cut`, else None. A row
    ends once the text written from its hole's start holds a line back at the function's indentation:
    :func:`scope_cut` of every longer text cuts there too (the lines before it are complete and the deciding
    line's indentation is written), so the completion and its reward are those of denoising every position, in
    fewer steps. None when no row is cut."""
    tests = [None if p is None else (functools.partial(scope_settled, p),) for p in prefixes]
    return settle_rows(tok, canvases, tests)


def _row_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


class GRPOTrainer:
    def __init__(self, args: GRPOArgs, tasks: list[Task], reward_fn: RewardFn | None = None) -> None:
        from ..model.devices import resolve_device

        if not tasks:
            raise BadInputError("no GRPO tasks")
        if args.group < 2:
            raise BadInputError("--group must be >= 2 (leave-one-out advantages)")
        if args.estimator not in ("coupled", "decoupled"):
            raise BadInputError("--estimator must be coupled or decoupled")
        self.args, self.tasks, self.reward_fn = args, tasks, reward_fn
        if args.threads:
            torch.set_num_threads(args.threads)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.acc = make_accelerator(args.device)
        check_distributed(self.acc)
        self.device = self.acc.device if self.acc else resolve_device(args.device)
        self.rank = self.acc.process_index if self.acc else 0
        self.is_main = self.rank == 0
        seed_everything(args.seed)
        self.lm, self.lora_cfg = load_trainable(
            args.model,
            self.device,
            lora=args.lora,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.0,
        )
        self.core, self.tok = self.lm.model, self.lm.tokenizer
        for t in tasks:  # repo holes get room for the original body (+25 %); the trailing pads are the slack
            if t.kind == "repo" and t.hole_tokens is None and t.truth:
                t.hole_tokens = min(4 * args.completion_len, int(len(self.tok.encode(t.truth)) * 1.25) + 4)
        self.ref = None
        if not args.lora and args.beta:
            self.ref = copy.deepcopy(self.core).eval().requires_grad_(False)
        lr = args.lr if args.lr is not None else (1e-5 if args.lora else 1e-6)
        self.horizon = Horizon(args.steps * args.inner_steps)  # the progress bar's end, in optimizer steps
        self.opt, self.sched = make_optimizer(self.core, lr, 0.0, args.warmup, args.steps * args.inner_steps)
        self.step = 0
        self.metrics = MetricsLog(self.out, self.is_main)
        if args.resume and (self.out / "last.pt").is_file():
            self.step = int(load_checkpoint(self.out / "last.pt", self.core, self.opt, self.sched)["step"])
            if self.ref is not None and (self.out / "ref.pt").is_file():
                self.ref.load_state_dict(torch.load(self.out / "ref.pt", map_location="cpu"))
        self.head = MaskedHead(self.core)
        if self.acc:
            self.head, self.opt = self.acc.prepare(self.head, self.opt)

    # ------------------------------------------------------------------------------------------- rollouts
    def pick_tasks(self, step: int) -> list[Task]:
        """Step ``step``'s tasks: positions ``step * k ...`` of the endless sequence of shuffled passes over all
        tasks (``k`` prompts a step; each rank walks its own sequence)."""
        n, k = len(self.tasks), self.args.prompts_per_step
        out = []
        for pos in range(step * k, step * k + k):
            order = np.random.default_rng([self.args.seed, pos // n, self.rank]).permutation(n)
            out.append(self.tasks[int(order[pos % n])])
        return out

    @torch.no_grad()
    def rollout(self, tasks: list[Task], seed: int, temperature: float | None = None):
        """(ids, valid, completion mask, completion ids per row, texts) for ``group`` samples of every task."""
        a, tok = self.args, self.tok
        canvases = []
        for t in tasks:
            n = t.hole_tokens or a.completion_len
            canvases.append(
                prepare_infill(
                    tok,
                    hole_prefix(t) + DEFAULT_MARKER + t.suffix,
                    length=n,
                    context_window=a.max_context_tokens,
                )
            )
        rows = [c for c in canvases for _ in range(a.group)]
        rows_tasks = [t for t in tasks for _ in range(a.group)]
        width = max(len(c.ids) for c in rows)
        x = torch.full((len(rows), width), tok.eos_id, dtype=torch.long)
        valid = torch.zeros_like(x, dtype=torch.bool)
        comp = torch.zeros_like(valid)
        for r, c in enumerate(rows):
            x[r, : len(c.ids)] = torch.tensor(c.ids)
            valid[r, : len(c.ids)] = True
            s, e = c.hole_spans[0]
            comp[r, s:e] = True
        x, valid, comp = x.to(self.device), valid.to(self.device), comp.to(self.device)
        steps = a.sampling_steps or max(1, int(comp.sum(1).max()))
        opts = SamplingOptions(
            steps=steps,
            alg=a.alg,
            temperature=a.temperature if temperature is None else temperature,
            top_p=a.top_p,
            seed=seed,
            block_size=a.block_size,
        )
        cut = [hole_prefix(t) if t.kind == "jsonl" and not t.chat else None for t in rows_tasks]
        self.core.eval()
        # the prompt's keys/values computed once, as fill and the editor decode: a step then runs the block being
        # written, not the whole canvas (rollouts were 80 % of a CPU step; their log-probabilities are never
        # used, the loss recomputes them on full canvases)
        denoiser = CachedContextDenoiser(self.core) if a.rollout_cache else FullCanvasDenoiser(self.core)
        gen = denoise(
            denoiser,
            x,
            valid,
            mask_id=tok.mask_id,
            options=opts,
            allowed_vocab=min(tok.vocab_size, self.lm.config.vocab_size),
            stop_ids=tuple(sorted(tok.stop_ids)),
            settle=scope_settle(tok, rows, cut),
        )
        _, final = run_to_end(gen)
        self.core.train()
        ids_per_row, texts = [], []
        for r, c in enumerate(rows):
            s, e = c.hole_spans[0]
            ids = final[r, s:e].tolist()
            ids_per_row.append(ids)
            end = next((i for i, t in enumerate(ids) if t in tok.stop_ids), len(ids))
            text = tok.decode(ids[:end])
            t = rows_tasks[r]
            texts.append(scope_cut(hole_prefix(t), text) if t.kind == "jsonl" and not t.chat else text)
        return final, valid, comp, ids_per_row, texts

    def rewards(
        self, row_tasks: list[Task], ids: list[list[int]], texts: list[str]
    ) -> tuple[list[float], dict]:
        """One reward per row; any failure in reward code counts as reward 0 for the rows it concerns."""
        a = self.args
        try:
            if self.reward_fn is not None:
                vals = [float(v) for v in self.reward_fn(row_tasks, ids, texts)]
                return vals, {"reward": float(np.mean(vals))}
            out = [0.0] * len(row_tasks)
            details = []
            for kind in ("jsonl", "repo"):
                sel = [i for i, t in enumerate(row_tasks) if t.kind == kind]
                if not sel:
                    continue
                kw = dict(workers=a.workers, test_weight=a.test_weight, format_weight=a.format_weight)
                if kind == "jsonl":
                    rs = jsonl_rewards(
                        [
                            extract_code(texts[i])
                            if row_tasks[i].chat
                            else hole_prefix(row_tasks[i]) + texts[i]
                            for i in sel
                        ],
                        [row_tasks[i].tests for i in sel],
                        per_test_s=a.test_timeout,
                        **kw,
                    )
                else:
                    rs = repo_rewards(
                        [hole_prefix(row_tasks[i]) + texts[i] + row_tasks[i].suffix for i in sel],
                        [row_tasks[i].rel_path for i in sel],
                        [row_tasks[i].repo_root for i in sel],
                        [row_tasks[i].tests for i in sel],
                        timeout_s=a.test_timeout * 6,
                        **kw,
                    )
                for i, r in zip(sel, rs, strict=True):
                    out[i] = r.value
                details.extend(rs)
            return out, reward_summary(details) if details else {"reward": 0.0}
        except Exception as exc:  # a reward bug must not end a long run
            log.warning(
                "reward computation failed (%s: %s): rewards set to 0 for this step", type(exc).__name__, exc
            )
            return [0.0] * len(row_tasks), {"reward": 0.0, "failures": f"{type(exc).__name__}: {exc}"}

    # ------------------------------------------------------------------------------------------- update
    def _ref_logprobs(self, x, valid, plan):
        mask_id = self.tok.mask_id
        if not self.args.beta:
            return None
        if self.ref is not None:
            return estimate_logprobs(self.ref, x, valid, plan, mask_id)
        with adapters_disabled(self.core):
            return estimate_logprobs(self.core, x, valid, plan, mask_id)

    def train_step(self) -> dict:
        a = self.args
        t0 = time.monotonic()
        tasks = self.pick_tasks(self.step)
        x, valid, comp, ids, texts = self.rollout(
            tasks, seed=_row_seed(a.seed, self.step, self.rank, "rollout")
        )
        t_roll = time.monotonic() - t0
        row_tasks = [t for t in tasks for _ in range(a.group)]
        rewards, rsum = self.rewards(row_tasks, ids, texts)
        t_rew = time.monotonic() - t0 - t_roll
        r = torch.tensor(rewards, dtype=torch.float32).view(len(tasks), a.group)
        adv = leave_one_out(r).flatten().to(self.device)
        seeds = [_row_seed(a.seed, self.step, self.rank, i, "mask") for i in range(len(row_tasks))]
        plan = plan_masks(comp, seeds, coupled=a.estimator == "coupled").to(self.device)
        mask_id = self.tok.mask_id
        with torch.no_grad():
            lp_ref = self._ref_logprobs(x, valid, plan)
            lp_old = estimate_logprobs(self.core, x, valid, plan, mask_id) if a.inner_steps > 1 else None
        b = x.shape[0]
        mb = a.micro_batch or b
        stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio": 0.0}
        for _ in range(a.inner_steps):
            for s in range(0, b, mb):
                sl = slice(s, min(b, s + mb))
                sub = type(plan)([m[sl] for m in plan.masks], [w[sl] for w in plan.weights], plan.t[sl])
                ctx = (
                    self.acc.autocast()
                    if self.acc
                    else torch.autocast(
                        self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
                    )
                )
                with ctx:
                    lp = estimate_logprobs(self.head, x[sl], valid[sl], sub, mask_id)
                old = lp.detach() if lp_old is None else lp_old[sl]
                parts = grpo_loss(
                    lp, old, None if lp_ref is None else lp_ref[sl], adv[sl], sub.scored, a.clip_eps, a.beta
                )
                loss = parts.loss * (sl.stop - sl.start) / b
                if self.acc:
                    self.acc.backward(loss)
                else:
                    loss.backward()
                w = (sl.stop - sl.start) / b / a.inner_steps
                stats["loss"] += float(loss.detach()) / a.inner_steps
                stats["kl"] += parts.kl * w
                stats["clip_fraction"] += parts.clip_fraction * w
                stats["ratio"] += parts.ratio_mean * w
            params = [p for p in self.core.parameters() if p.requires_grad]
            gnorm = (
                self.acc.clip_grad_norm_(params, a.grad_clip)
                if self.acc
                else torch.nn.utils.clip_grad_norm_(params, a.grad_clip)
            )
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        self.step += 1
        if self.ref is not None and a.ref_sync and self.step % a.ref_sync == 0:
            self.ref.load_state_dict(self.core.state_dict())
        lengths = [len(t) for t in texts]
        stops = self.tok.stop_ids
        tok_lengths = [next((i for i, t in enumerate(row) if t in stops), len(row)) for row in ids]
        return {
            "step": self.step,
            **rsum,
            "reward_std": float(r.std()),
            "flat_groups": int((r.max(1).values == r.min(1).values).sum()),
            "task_rewards": [[t.task_id, round(float(r[i].mean()), 4)] for i, t in enumerate(tasks)],
            "groups": int(r.shape[0]),
            **stats,
            "gnorm": float(gnorm),
            "completion_chars": float(np.mean(lengths)),
            "completion_tokens": float(np.mean(tok_lengths)),
            "lr": self.sched.get_last_lr()[0],
            "rollout_s": round(t_roll, 2),
            "reward_s": round(t_rew, 2),
            "step_s": round(time.monotonic() - t0, 2),
        }

    @torch.no_grad()
    def mean_reward(self, rounds: int = 2, seed: int = 12345, progress: bool = False, tag: str = "") -> float:
        """Mean reward of fresh rollouts on fixed tasks and seeds: a before/after number free of training noise.
        ``progress``: a bar per rollout round (each is minutes on a CPU: no silent minutes before training)."""
        vals = []
        bar = progress_bar(rounds, 0, progress and self.is_main, f"grpo eval {tag}".strip())
        for k in range(rounds):
            tasks = self.tasks[: self.args.prompts_per_step] if k == 0 else self.pick_tasks(10_000_000 + k)
            _, _, _, ids, texts = self.rollout(tasks, seed=seed + k)
            vals.extend(self.rewards([t for t in tasks for _ in range(self.args.group)], ids, texts)[0])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{np.mean(vals):.3f}", refresh=True)
        if bar is not None:
            bar.close()
        return float(np.mean(vals))

    def save(self) -> None:
        if self.is_main:
            save_checkpoint(
                self.out / "last.pt", self.core, self.opt, self.sched, self.step, {"args": asdict(self.args)}
            )
            if self.ref is not None:
                from .pretrain import _atomic_save

                _atomic_save(self.ref.state_dict(), self.out / "ref.pt")

    def fit(self, progress: bool = True, eval_rounds: int = 2) -> dict:
        a = self.args
        before = self.mean_reward(eval_rounds, progress=progress, tag="before") if eval_rounds else None
        self.metrics.write(
            {
                "event": "start",
                "step": self.step,
                "tasks": len(self.tasks),
                "eval_reward": before,
                "args": asdict(a),
            }
        )
        bar = progress_bar(a.steps, self.step, progress and self.is_main, "grpo")
        start, reason = time.monotonic(), "steps"
        flat = FlatRewardWatch()
        while self.step < a.steps:
            m = self.train_step()
            self.horizon.fit(
                self.step * a.inner_steps,
                m["step_s"] / a.inner_steps,
                time.monotonic() - start,
                (a.time_limit or 0) * 60,
            )
            self.metrics.write(m)
            advice = flat.observe(m)
            if advice and self.is_main:
                log.warning("%s", advice)
            if bar is not None:
                bar.update(1)
                self.horizon.show(bar, per=a.inner_steps)
                bar.set_postfix(
                    reward=f"{m['reward']:.3f}",
                    kl=f"{m['kl']:.4f}",
                    clip=f"{m['clip_fraction']:.2f}",
                    refresh=False,
                )
            if a.ckpt_every and self.step % a.ckpt_every == 0:
                self.save()
                self.plot()
            if a.time_limit and time.monotonic() - start > a.time_limit * 60:
                reason = "time_limit"
                break
        if bar is not None:
            bar.close()
        self.save()
        after = self.mean_reward(eval_rounds, progress=progress, tag="after") if eval_rounds else None
        plot = self.plot()
        exported = self.export()
        summary = {
            "event": "end",
            "reason": reason,
            "step": self.step,
            "eval_reward_before": before,
            "eval_reward_after": after,
            "curve": curve_summary(self._step_records()) if self.is_main else None,
            "plot": plot,
            "exported": exported,
            "elapsed_s": round(time.monotonic() - start, 1),
        }
        self.metrics.write(summary)
        return summary

    def plot(self) -> str | None:
        """``reward.png`` (:func:`reward_curve.plot_rewards`); None when matplotlib is missing."""
        if not (self.is_main and self.args.plot):
            return None
        recs = self._step_records()
        title = f"GRPO ({self.args.estimator} estimator)"
        steps, rewards = [r["step"] for r in recs], [r["reward"] for r in recs]
        return plot_rewards(steps, rewards, title, self.out / "reward.png", revisit_summary(recs))

    def _step_records(self) -> list[dict]:
        return [r for r in self.metrics.read() if "reward" in r and "step" in r and "event" not in r]

    def export(self) -> dict:
        a, out = self.args, {}
        if not self.is_main or a.export == "none":
            return out
        meta = {"base": str(self.lm.path), "step": self.step, "grpo_args": asdict(a)}
        if self.lora_cfg is not None and a.export in ("adapter", "both"):
            out["adapter"] = str(
                save_adapter(self.core, self.lora_cfg, self.out / "adapter", str(self.lm.path))
            )
        if a.export in ("merged", "both") or (a.export == "adapter" and self.lora_cfg is None):
            dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[
                a.export_dtype
            ]
            out["model"] = str(
                export_checkpoint(merge_lora(self.core), self.lm.path, self.out / "model", dtype, meta)
            )
        return out
