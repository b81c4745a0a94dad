"""Argument parsing and handlers of ``diffucoder train sft`` and ``diffucoder train grpo``.

Kept out of ``commands/train.py`` so that file stays about the pretraining pipeline; like it, this module
imports torch only inside the handlers (``diffucoder --help`` stays fast).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import BadInputError

# what SFTArgs / GRPOArgs apply when a flag is not given (a test holds these to the dataclasses): said in --help
SFT_DEFAULTS = {"steps": 200, "lr": "2e-4 with LoRA, 1e-5 with --full", "ckpt_every": 50}
GRPO_DEFAULTS = {"steps": 100, "lr": "1e-5 with LoRA, 1e-6 with --full", "ckpt_every": 20}


def _common(p: argparse.ArgumentParser, defaults: dict, out_required: bool = True) -> None:
    """The options sft and grpo share; ``defaults`` holds the command's own (steps, lr, ckpt_every), which its
    args dataclass applies: the flags default to None so that a run's arguments say what was asked."""
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument(
        "--out", required=out_required, help="run folder: last.pt, metrics.jsonl, model/ and adapter/"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--lora", dest="lora", action="store_true", default=True, help="train a LoRA adapter (default)"
    )
    mode.add_argument(
        "--full", dest="lora", action="store_false", help="train every weight instead of a LoRA adapter"
    )
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default: {defaults['steps']})")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {defaults['lr']})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when present")
    p.add_argument(
        "--device", default="auto", help="auto or cpu (under accelerate, the launcher assigns GPUs)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's choice, one per core)"
    )
    p.add_argument(
        "--ckpt-every",
        type=int,
        default=None,
        help=f"steps between checkpoints (default: {defaults['ckpt_every']})",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop cleanly and save after this many minutes of training (default: no limit)",
    )
    p.add_argument(
        "--export",
        choices=["merged", "adapter", "both", "none"],
        default="merged",
        help="merged: HF-layout checkpoint in OUT/model (loads with --model); adapter: OUT/adapter",
    )
    p.add_argument("--export-dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16")
    p.add_argument("--no-progress", action="store_true")


def register(sub) -> None:
    s = sub.add_parser("sft", help="fine-tune on a repository (masked diffusion loss; LoRA or full)")
    s.add_argument("--repo", help="repository folder (git-tracked files, .gitignore respected)")
    s.add_argument("--instructions", help='JSONL of {"prompt", "response"} pairs')
    s.add_argument(
        "--languages", default="python", help="comma-separated: python,javascript,go,... or .suffix"
    )
    s.add_argument(
        "--holdout",
        action="append",
        default=[],
        metavar="GLOB",
        help="held-out files (repeatable; default: none, --holdout-fraction chooses them)",
    )
    s.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.1,
        help="share of the code (characters) held out, whole files taken in path-hash order",
    )
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--grad-accum", type=int, default=1)
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument(
        "--window-fraction",
        type=float,
        default=0.0,
        help="share of repository rows that are plain windows with every token trained (the rest: one hole each)",
    )
    s.add_argument(
        "--ordered-fraction",
        type=float,
        default=0.0,
        help="share of rows whose hole is masked as left-to-right decoding sees it: written up to a point, "
        "masked after it (the rest: masked at random)",
    )
    s.add_argument(
        "--causal-fraction",
        type=float,
        default=0.0,
        help="share of batches trained as a left-to-right LM (causal attention, no masks, every trained token "
        "predicted from the ones before it; the rest: the masked diffusion loss)",
    )
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument(
        "--eval-lines",
        type=int,
        default=200,
        help="held-out lines for exact match and edit similarity (0: skip)",
    )
    s.add_argument("--eval-batches", type=int, default=4, help="held-out loss batches (0: skip)")
    s.add_argument(
        "--humaneval", type=int, default=0, metavar="N", help="also HumanEval-Infilling on N tasks"
    )
    _common(s, SFT_DEFAULTS)
    s.set_defaults(func=_sft)

    g = sub.add_parser("grpo", help="coupled-GRPO with unit-test rewards in the sandbox")
    g.add_argument("--tasks", help='JSONL of {"prompt", "tests"} (tests: list of asserts)')
    g.add_argument(
        "--chat", action="store_true", help="JSONL prompts are questions for an Instruct model (ChatML)"
    )
    g.add_argument("--repo", help="repository: functions its tests exercise get their body masked")
    g.add_argument(
        "--list-tasks",
        action="store_true",
        help="print each task (function or id, test count) and exit without training (no --out needed)",
    )
    g.add_argument("--max-tasks", type=int, default=None)
    g.add_argument("--prompts-per-step", type=int, default=2)
    g.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    g.add_argument("--completion-len", type=int, default=48, help="hole tokens per completion")
    g.add_argument(
        "--sampling-steps",
        type=int,
        default=None,
        help="denoising steps per rollout (default: the hole length)",
    )
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument(
        "--block-size",
        type=int,
        default=1,
        help="rollouts reveal the hole in blocks of this many positions, in order, as fill does (0: all at once; "
        "1: left to right, so a rollout stops where its function ends)",
    )
    g.add_argument(
        "--rollout-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="context key/value cache in rollouts, as fill decodes (--no-rollout-cache: full-canvas passes)",
    )
    g.add_argument("--estimator", choices=["coupled", "decoupled"], default="coupled")
    g.add_argument("--beta", type=float, default=0.01, help="k3-KL weight")
    g.add_argument("--clip-eps", type=float, default=0.5)
    g.add_argument(
        "--ref-sync", type=int, default=64, help="steps between reference updates (full fine-tuning)"
    )
    g.add_argument("--inner-steps", type=int, default=1, help="optimizer steps per rollout batch")
    g.add_argument("--micro-batch", type=int, default=None, help="rows per backward pass")
    g.add_argument("--test-weight", type=float, default=1.0)
    g.add_argument("--format-weight", type=float, default=0.1)
    g.add_argument("--workers", type=int, default=2, help="parallel sandbox runs")
    g.add_argument("--test-timeout", type=float, default=5.0, help="seconds per test")
    g.add_argument("--max-context-tokens", type=int, default=1024)
    g.add_argument(
        "--eval-rounds", type=int, default=2, help="fixed-seed rollout rounds before/after (0: skip)"
    )
    g.add_argument("--no-plot", action="store_true")
    # the handler asks for --out: --list-tasks trains nothing and needs none
    _common(g, GRPO_DEFAULTS, out_required=False)
    g.add_argument(
        "--unsafe-exec",
        action="store_true",
        help="run rollouts' tests without the bubblewrap sandbox where it cannot run here; only on a machine you "
        "would let untrusted code run on",
    )
    g.set_defaults(func=_grpo)


def _opt(args, **names) -> dict:
    """Only the options the user gave: dataclass defaults stay the single source of truth."""
    return {k: getattr(args, v) for k, v in names.items() if getattr(args, v) is not None}


def _sft(args: argparse.Namespace) -> int:
    import sys

    from .sft import SFTArgs, SFTTrainer

    if args.repo and not Path(args.repo).is_dir():
        raise BadInputError(f"no such repository folder: {args.repo}")
    for flag, value in (
        ("--window-fraction", args.window_fraction),
        ("--ordered-fraction", args.ordered_fraction),
        ("--causal-fraction", args.causal_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise BadInputError(f"{flag} must be between 0 and 1, got {value}")
    sargs = SFTArgs(
        out=args.out,
        repo=args.repo,
        instructions=args.instructions,
        model=args.model,
        languages=args.languages,
        holdout=args.holdout,
        holdout_fraction=args.holdout_fraction,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seq_len=args.seq_len,
        window_fraction=args.window_fraction,
        ordered_fraction=args.ordered_fraction,
        causal_fraction=args.causal_fraction,
        warmup=args.warmup,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        threads=args.threads,
        eval_lines=args.eval_lines,
        eval_batches=args.eval_batches,
        humaneval=args.humaneval,
        export=args.export,
        export_dtype=args.export_dtype,
        time_limit=args.time_limit,
        **_opt(args, steps="steps", lr="lr", ckpt_every="ckpt_every"),
    )
    if not 0.0 <= args.holdout_fraction < 1.0:
        raise BadInputError(f"--holdout-fraction must be in [0, 1), got {args.holdout_fraction}")
    trainer = SFTTrainer(sargs)
    if trainer.split:
        sp = trainer.split
        print(
            f"held out {sp['heldout_files']} of {sp['files']} files, {100 * sp['heldout_char_share']:.1f} % of the "
            f"code (largest file {100 * sp['largest_heldout_file_share']:.1f} %): {Path(args.out) / 'heldout.txt'}",
            file=sys.stderr,
        )
    summary = trainer.fit(progress=not args.no_progress)
    line = _change_line(summary)
    if line:
        print(line, file=sys.stderr)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _change_line(summary: dict) -> str:
    """One readable line of the held-out line metrics before -> after, with the paired 95 % intervals."""
    b, a, c = summary.get("before") or {}, summary.get("after") or {}, summary.get("change") or {}
    if "intrinsic_exact_match" not in a or not c:
        return ""

    def span(key: str) -> str:
        lo, hi = c[key]
        return f"{lo:+.1f}..{hi:+.1f}"

    return (
        f"held-out lines (n={c['n']}): exact match {b.get('intrinsic_exact_match', 0):.1f} -> "
        f"{a['intrinsic_exact_match']:.1f} % ({c['exact_match_delta']:+.1f}, 95 % CI {span('exact_match_delta_ci95')}); "
        f"edit similarity {b.get('intrinsic_edit_similarity', 0):.1f} -> {a['intrinsic_edit_similarity']:.1f} % "
        f"({c['edit_similarity_delta']:+.1f}, {span('edit_similarity_delta_ci95')}); mean fill "
        f"{b.get('intrinsic_mean_fill_chars', 0):.0f} -> {a['intrinsic_mean_fill_chars']:.0f} chars "
        f"(truth {a.get('intrinsic_mean_truth_chars', 0):.0f})"
    )


def _grpo(args: argparse.Namespace) -> int:
    if args.unsafe_exec:
        import os

        from ..sandbox import UNSAFE_ENV

        os.environ[UNSAFE_ENV] = "1"
    import sys

    from .repo_tasks import NoTasksError, find_repo_tasks, read_jsonl_tasks

    if not args.tasks and not args.repo:
        raise BadInputError("give --tasks (JSONL of prompt/tests), --repo, or both")
    if not args.out and not args.list_tasks:
        raise BadInputError("give --out (the run folder), or --list-tasks to only list the tasks")
    if args.max_tasks is not None and args.max_tasks < 1:
        raise BadInputError(f"--max-tasks must be at least 1, got {args.max_tasks}")
    # every input is read and checked before anything is written: bad input leaves no run folder behind
    tasks = read_jsonl_tasks(args.tasks, chat=args.chat) if args.tasks else []
    if args.repo:
        if not Path(args.repo).is_dir():
            raise BadInputError(f"no such repository folder: {args.repo}")
        search = find_repo_tasks(
            args.repo,
            workers=args.workers,
            max_tasks=args.max_tasks,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        if not search.tasks:
            raise NoTasksError(search.explain(), search)
        print(search.explain(), file=sys.stderr)
        tasks += search.tasks
    if args.max_tasks:
        tasks = tasks[: args.max_tasks]
    if args.list_tasks:
        for t in tasks:
            n = len(t.tests)
            where = f"{t.rel_path}::{t.name}" if t.kind == "repo" else t.task_id
            print(f"{where}\t{n} test{'s' if n != 1 else ''}")
        print(f"{len(tasks)} tasks", file=sys.stderr)
        return 0
    print(f"{len(tasks)} tasks")

    from .grpo import GRPOArgs, GRPOTrainer

    gargs = GRPOArgs(
        out=args.out,
        model=args.model,
        lora=args.lora,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        prompts_per_step=args.prompts_per_step,
        group=args.group,
        completion_len=args.completion_len,
        sampling_steps=args.sampling_steps,
        temperature=args.temperature,
        block_size=args.block_size or None,
        rollout_cache=args.rollout_cache,
        estimator=args.estimator,
        beta=args.beta,
        clip_eps=args.clip_eps,
        ref_sync=args.ref_sync,
        inner_steps=args.inner_steps,
        micro_batch=args.micro_batch,
        test_weight=args.test_weight,
        format_weight=args.format_weight,
        workers=args.workers,
        test_timeout=args.test_timeout,
        max_context_tokens=args.max_context_tokens,
        seed=args.seed,
        resume=args.resume,
        device=args.device,
        threads=args.threads,
        export=args.export,
        export_dtype=args.export_dtype,
        plot=not args.no_plot,
        time_limit=args.time_limit,
        **_opt(args, steps="steps", lr="lr", ckpt_every="ckpt_every"),
    )
    summary = GRPOTrainer(gargs, tasks).fit(progress=not args.no_progress, eval_rounds=args.eval_rounds)
    c = summary.get("curve") or {}
    if "reward_gain" in c:
        n = c["steps_per_fifth"]
        print(
            _gain_line(
                f"reward per step: first {n} steps",
                f"last {n}",
                c,
                "reward_first_fifth",
                "reward_last_fifth",
                "reward_gain",
            ),
            file=sys.stderr,
        )
    if "task_gain" in c:
        print(
            _gain_line(
                f"the same tasks drawn again ({c['tasks_revisited']}): first",
                "last",
                c,
                "task_reward_first_visit",
                "task_reward_last_visit",
                "task_gain",
            ),
            file=sys.stderr,
        )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _gain_line(first_label: str, last_label: str, c: dict, first: str, last: str, gain: str) -> str:
    """One line of a GRPO curve verdict (``train/reward_curve.py``): both means, the gain, and whether it is more
    than twice its standard error (keys ``<gain>_se`` and ``<gain>_beyond_noise``)."""
    verdict = "more than" if c[f"{gain}_beyond_noise"] else "within"
    return (
        f"{first_label} {c[first]:.3f}, {last_label} {c[last]:.3f} ({c[gain]:+.3f}, {verdict} twice its "
        f"standard error {c[f'{gain}_se']:.3f})"
    )
