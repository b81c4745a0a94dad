"""``diffucoder bench``: reference decoder vs each optimisation vs all together vs an AR baseline, one run."""

from __future__ import annotations

import argparse
import json
import sys

from .fill import add_model_options

# the configurations of diffucoder_lsp.bench.CONFIGS, spelled out so that building the CLI never imports torch
CONFIGS = ("reference", "cache", "block", "parallel", "all", "bounded", "runs", "reuse", "ar")
BLOCK_SIZE = 32  # diffucoder_lsp.bench.BLOCK_SIZE
ENTROPY_BOUND = 1.0  # diffucoder_lsp.bench.ENTROPY_BOUND
DRAFT_TOKENS = 7  # diffucoder_lsp.engine.cache.DRAFT_TOKENS


def _ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure decoding speed and quality of every configuration", description=__doc__
    )
    add_model_options(p)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per case (after one warm-up run)")
    p.add_argument("--cases", type=int, default=3, help="windows cut per workload")
    p.add_argument("--contexts", type=_ints, default=(256, 1024, 4096), help="context sizes in tokens")
    p.add_argument("--spans", type=_ints, default=(16, 64), help="hole sizes in tokens")
    p.add_argument("--holes", type=_ints, default=(1, 3), help="holes per canvas")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configurations")
    p.add_argument("--threshold", type=float, default=0.9, help="parallel unmasking confidence threshold")
    p.add_argument(
        "--tokens-per-step",
        type=int,
        default=1,
        help="least tokens parallel unmasking reveals per step (parallel, all, reuse)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=BLOCK_SIZE,
        help="block decoding's block in tokens (block, all, reuse); 0 = every hole at once",
    )
    p.add_argument(
        "--entropy-bound",
        type=float,
        default=ENTROPY_BOUND,
        help="entropy-bounded unmasking's bound in nats (bounded)",
    )
    p.add_argument(
        "--draft-tokens",
        type=int,
        default=DRAFT_TOKENS,
        help="tokens a speculative step may guess from the canvas at blocks of one (0 = no speculation)",
    )
    p.add_argument("--refresh-every", type=int, default=0, help="context cache refresh period (0 = never)")
    p.add_argument("--corpus", default=None, help="held-out valid.jsonl (default: this package's source)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import bench, build_workloads, format_table, held_out_text, rows_as_json
    from ..errors import BadInputError
    from ..model.loading import load_model

    if args.repeat < 1:
        raise BadInputError("--repeat must be at least 1")
    if args.tokens_per_step < 1:
        raise BadInputError("--tokens-per-step must be at least 1")
    if args.block_size < 0:
        raise BadInputError("--block-size must be at least 0")
    if args.draft_tokens < 0:
        raise BadInputError("--draft-tokens must be at least 0")
    if not args.entropy_bound >= 0:
        raise BadInputError("--entropy-bound must be at least 0")
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise BadInputError(f"unknown configurations: {', '.join(sorted(unknown))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, quant=args.quant)
    workloads = build_workloads(
        lm.tokenizer,
        held_out_text(args.corpus),
        contexts=args.contexts,
        spans=args.spans,
        holes=args.holes,
        cases=args.cases,
        max_tokens=lm.config.max_position_embeddings,
    )
    if not workloads:
        raise BadInputError("no workload fits the model's window and the held-out text")
    rows = bench(
        lm,
        workloads,
        repeat=args.repeat,
        threshold=args.threshold,
        entropy_bound=args.entropy_bound,
        refresh_every=args.refresh_every,
        tokens_per_step=args.tokens_per_step,
        block_size=args.block_size,
        draft_tokens=args.draft_tokens,
        configs=configs,
        log=lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True),
    )
    meta = {
        "model": lm.name,
        "path": str(lm.path),
        "device": str(lm.device),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "quant": lm.quant,
        "threads": torch.get_num_threads(),
        "repeat": args.repeat,
        "cases": args.cases,
        "threshold": args.threshold,
        "entropy_bound": args.entropy_bound,
        "refresh_every": args.refresh_every,
        "tokens_per_step": args.tokens_per_step,
        "block_size": args.block_size,
        "device_name": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else "cpu",
    }
    if args.json:
        json.dump(rows_as_json(rows, meta), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(
            f"model {meta['model']} on {meta['device_name']} ({meta['dtype']}, quant {meta['quant']}, "
            f"{meta['threads']} threads), {args.cases} cases x {args.repeat} runs"
        )
        print(format_table(rows))
    return 0
