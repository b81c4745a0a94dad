"""``diffucoder eval``: measure completion quality.

- ``diffucoder eval humaneval-infill``: HumanEval-Infilling-style tasks (see
  :mod:`diffucoder_lsp.eval.humaneval_infill`), filled by the model, executed against the problem's tests in the
  sandbox; pass@1 per split and length mode on stdout, a progress bar on stderr, a JSON result file.
- ``diffucoder eval intrinsic``: exact match and edit similarity of single-line infills on held-out corpus files.

``--filler oracle`` / ``--filler empty`` replace the model with the truth / an empty fill. They check the harness
on the user's machine (oracle must score 100%, empty near 0%) and need neither torch nor a model.
torch and the engine are imported only when a model is actually loaded.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time

log = logging.getLogger(__name__)

FILLERS = ("model", "oracle", "empty")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure completion quality (HumanEval-Infilling, intrinsic)",
        description="Measure completion quality.",
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="BENCHMARK")
    parser.set_defaults(func=lambda args: _no_benchmark(parser))

    he = sub.add_parser(
        "humaneval-infill",
        help="pass@1 on HumanEval-Infilling-style tasks, executed in a sandbox",
        description="Fill HumanEval-Infilling-style holes and run each filled program against its tests.",
    )
    he.add_argument(
        "--split",
        default="single-line",
        help="single-line, multi-line, random-span, or all (default: single-line)",
    )
    he.add_argument(
        "--length",
        default="oracle",
        choices=("oracle", "auto", "both"),
        help="hole length given to the model: the true token count, auto, or both (default: oracle)",
    )
    he.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most N tasks per split, spread over problems (default: all)",
    )
    he.add_argument("--workers", type=int, default=2, help="parallel sandbox executions (default: 2)")
    he.add_argument("--timeout", type=float, default=5.0, help="seconds per program (default: 5)")
    he.add_argument(
        "--memory-mb", type=int, default=512, help="address-space limit per program (default: 512)"
    )
    he.add_argument(
        "--task-seed", type=int, default=0, help="seed of the random-span construction (default: 0)"
    )
    he.add_argument(
        "--out",
        default="humaneval_infill_results.json",
        help="JSON result file (default: ./humaneval_infill_results.json)",
    )
    _model_options(he)
    he.set_defaults(func=run_humaneval)

    intr = sub.add_parser(
        "intrinsic",
        help="exact match and edit similarity of single-line infills on held-out files",
        description="Hide single lines of held-out corpus files and score the model's fills.",
    )
    intr.add_argument("--corpus", required=True, help="held-out JSON lines file ({path, sha, text} per line)")
    intr.add_argument("--limit", type=int, default=200, help="number of lines to sample (default: 200)")
    intr.add_argument("--per-file", type=int, default=2, help="lines per file (default: 2)")
    intr.add_argument(
        "--length", default="oracle", choices=("oracle", "auto"), help="hole length (default: oracle)"
    )
    intr.add_argument("--sample-seed", type=int, default=0, help="seed of the line sampling (default: 0)")
    intr.add_argument("--out", default=None, help="JSON result file (default: none)")
    _model_options(intr)
    intr.set_defaults(func=run_intrinsic)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument(
        "--filler",
        default="model",
        choices=FILLERS,
        help="model, or a harness check: oracle (the truth) / empty (default: model)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 (default: auto)")
    p.add_argument(
        "--quant", default="none", help="weight quantization, as in `diffucoder fill` (default: none)"
    )
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the engine's)")
    p.add_argument("--tokens-per-step", type=int, default=None, help="tokens revealed per step")
    p.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: the engine's)"
    )
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the engine's)")
    p.add_argument("--max-context-tokens", type=int, default=None, help="cut the context around the hole")


def _no_benchmark(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _check_positive(name: str, value, allow_none: bool = True) -> None:
    from ..errors import BadInputError

    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise BadInputError(f"{name} must be positive, got {value}")


def _load_filler(args, truth_fn):
    """(fill_fn, count_tokens, config) for the chosen filler; the model path imports torch and the engine."""
    if args.filler == "oracle":
        return truth_fn(), None, {"filler": "oracle"}
    if args.filler == "empty":
        from ..eval.runner import empty_fill_fn

        return empty_fill_fn, None, {"filler": "empty"}
    from ..engine.infill import SamplingOptions
    from ..eval.runner import model_fill_fn, token_counter
    from ..model.loading import load_model

    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "tokens_per_step": args.tokens_per_step,
            "temperature": args.temperature,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    options = SamplingOptions(**overrides)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, quant=args.quant)
    config = {
        "filler": "model",
        "model": str(getattr(lm, "name", args.model)),
        "path": str(getattr(lm, "path", "")),
        "device": str(getattr(lm, "device", args.device)),
        "dtype": str(getattr(lm, "dtype", args.dtype)),
        "quant": str(getattr(lm, "quant", args.quant)),
        "max_context_tokens": args.max_context_tokens,
        "options": _as_dict(options),
    }
    fill = model_fill_fn(lm, options, max_context_tokens=args.max_context_tokens)
    return fill, token_counter(lm), config


def _as_dict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(vars(obj))


def run_humaneval(args) -> int:
    from ..eval.humaneval_infill import build_tasks
    from ..eval.runner import (
        evaluate_tasks,
        format_summary,
        oracle_fill_fn,
        parse_length_modes,
        summarize,
        write_json,
    )

    _check_positive("--limit", args.limit)
    _check_positive("--workers", args.workers, allow_none=False)
    _check_positive("--timeout", args.timeout, allow_none=False)
    modes = parse_length_modes(args.length)
    tasks = build_tasks(args.split, seed=args.task_seed, limit=args.limit)
    fill, count_tokens, filler_config = _load_filler(args, lambda: oracle_fill_fn(tasks))
    started = time.time()
    records = evaluate_tasks(
        tasks,
        fill,
        length_modes=modes,
        count_tokens=count_tokens,
        workers=args.workers,
        timeout_s=args.timeout,
        memory_mb=args.memory_mb,
        progress=True,
    )
    summary = summarize(records)
    config = {
        "benchmark": "humaneval-infill",
        "split": args.split,
        "length": args.length,
        "limit": args.limit,
        "task_seed": args.task_seed,
        "workers": args.workers,
        "timeout_s": args.timeout,
        "memory_mb": args.memory_mb,
        "n_tasks": len(tasks),
        "wall_s": round(time.time() - started, 2),
        "python": platform.python_version(),
        **filler_config,
    }
    if args.out:
        write_json(args.out, config=config, summary=summary, records=records)
        print(f"results written to {args.out}", file=sys.stderr)
    print(format_summary(summary))
    return 0


def run_intrinsic(args) -> int:
    from ..eval.intrinsic import evaluate_lines, load_corpus, records_as_dicts, sample_lines, summarize_lines
    from ..eval.runner import write_json

    _check_positive("--limit", args.limit, allow_none=False)
    _check_positive("--per-file", args.per_file, allow_none=False)
    samples = sample_lines(
        load_corpus(args.corpus), limit=args.limit, seed=args.sample_seed, per_file=args.per_file
    )
    if not samples:
        from ..errors import BadInputError

        raise BadInputError(f"no eligible lines in {args.corpus}")

    def truth():
        table = {(s.prefix, s.suffix): s.middle for s in samples}
        return lambda prefix, suffix, length: table[(prefix, suffix)]

    fill, count_tokens, filler_config = _load_filler(args, truth)
    started = time.time()
    records = evaluate_lines(samples, fill, length_mode=args.length, count_tokens=count_tokens, progress=True)
    summary = summarize_lines(records)
    config = {
        "benchmark": "intrinsic",
        "corpus": str(args.corpus),
        "limit": args.limit,
        "per_file": args.per_file,
        "length": args.length,
        "sample_seed": args.sample_seed,
        "wall_s": round(time.time() - started, 2),
        **filler_config,
    }
    if args.out:
        write_json(args.out, config=config, summary=summary, records=records_as_dicts(records))
        print(f"results written to {args.out}", file=sys.stderr)
    print(
        f"intrinsic ({args.length} length): n={summary['n']} exact match {summary['exact_match']:.1f}% "
        f"edit similarity {summary['edit_similarity']:.1f}% mean fill {summary['mean_fill_ms']:.0f} ms"
        + (f" ({summary['errors']} fills failed)" if summary["errors"] else "")
    )
    return 0
