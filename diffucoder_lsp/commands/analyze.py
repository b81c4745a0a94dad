"""``diffucoder analyze``: how left-to-right does the model decode, and how does temperature change that?

Decodes a set of infill tasks (HumanEval-Infilling single lines by default, or lines of held-out files with
--files) at several temperatures and writes, into --out: ``analysis.json`` (local/global AR-ness@k, reveal-order
heatmaps, first-step confidence by offset from the prefix end, and every run) and three PNG plots. Each hole
gets as many masks as the hidden text has tokens (--length oracle) unless told otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import BadInputError
from .fill import add_model_options


def parse_temperatures(value: str) -> list[float]:
    try:
        temps = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None
    if not temps or any(t < 0 for t in temps):
        raise argparse.ArgumentTypeError("temperatures must be numbers >= 0")
    return sorted(set(temps))


def parse_analysis_length(value: str) -> int | str:
    if value == "oracle":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'oracle' or a number of tokens, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("length must be at least 1")
    return n


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def register(sub) -> None:
    p = sub.add_parser(
        "analyze", help="AR-ness and reveal-order analysis of the model's decoding", description=__doc__
    )
    add_model_options(p)
    p.add_argument(
        "--temperatures",
        type=parse_temperatures,
        default=[0.2, 0.6, 1.0],
        help="comma-separated (default 0.2,0.6,1.0)",
    )
    p.add_argument("--limit", type=positive_int, default=20, help="tasks per temperature (default 20)")
    p.add_argument(
        "--out", default="diffucoder-analysis", help="output folder (default ./diffucoder-analysis)"
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="denoising steps per task (default: one per token)"
    )
    p.add_argument("--split", default="single-line", help="HumanEval-Infilling split (default single-line)")
    p.add_argument(
        "--files",
        nargs="+",
        default=None,
        metavar="PATH",
        help="hide lines of these files (or *.py under folders) instead",
    )
    p.add_argument(
        "--length", type=parse_analysis_length, default="oracle", help="mask tokens per hole: oracle or N"
    )
    p.add_argument("--alg", choices=["entropy", "maskgit_plus", "topk_margin", "origin"], default="entropy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-k", type=positive_int, default=8, help="largest k for AR-ness@k (default 8)")
    p.add_argument("--bins", type=positive_int, default=10, help="heatmap resolution (default 10)")
    p.add_argument("--no-plots", action="store_true", help="write the JSON only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analyze.collect import file_tasks, humaneval_tasks
    from ..engine.sampler import SamplingOptions

    options = SamplingOptions(steps=args.steps, alg=args.alg, top_p=args.top_p, seed=args.seed)  # validates
    if args.files:
        tasks, source = file_tasks(args.files, limit=args.limit), "files"
    else:
        tasks, source = humaneval_tasks(args.split, limit=args.limit), f"humaneval-infilling:{args.split}"
    if not tasks:
        raise BadInputError("no tasks to analyze")
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401  (fail before the long part)
        except ModuleNotFoundError as exc:
            raise BadInputError(
                "the plots need matplotlib: pip install matplotlib (or pass --no-plots)"
            ) from exc

    from ..analyze.collect import collect
    from ..analyze.report import summarize, write_json
    from ..model.loading import load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype, quant=args.quant)

    tty = sys.stderr.isatty()

    def progress(done: int, total: int, run) -> None:
        if tty:  # a live counter for people; logs (with -v) for everything else
            print(
                f"\ranalyze: {done}/{total} runs",
                end="" if done < total else "\n",
                file=sys.stderr,
                flush=True,
            )

    runs = collect(lm, tasks, args.temperatures, options, length=args.length, progress=progress)
    meta = {
        "model": {
            "name": lm.name,
            "path": str(lm.path),
            "device": str(lm.device),
            "dtype": str(lm.dtype).removeprefix("torch."),
        },
        "tasks": {"source": source, "count": len(tasks)},
        "settings": {
            "alg": args.alg,
            "steps": args.steps,
            "top_p": args.top_p,
            "seed": args.seed,
            "length": args.length,
        },
    }
    summary = summarize(runs, args.temperatures, max_k=args.max_k, bins=args.bins, meta=meta)
    out = Path(args.out)
    written = [write_json(summary, out)]
    if not args.no_plots:
        from ..analyze.report import plot_all

        written += plot_all(summary, out)
    for entry in summary["temperatures"]:
        print(
            f"T={entry['temperature']:g}: local AR-ness@1 {entry['local_ar_ness']['1']}, "
            f"global AR-ness@1 {entry['global_ar_ness']['1']} over {entry['runs']} runs",
            file=sys.stderr,
        )
    for path in written:
        print(path)
    return 0
