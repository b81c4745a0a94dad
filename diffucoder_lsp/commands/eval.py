"""``diffucoder eval``: measure completion quality.

- ``diffucoder eval humaneval-infill``: HumanEval-Infilling-style tasks (see
  :mod:`diffucoder_lsp.eval.humaneval_infill`), filled by the model, executed against the problem's tests in the
  sandbox; pass@1 per split and length mode on stdout, a progress bar on stderr, a JSON result file.
- ``diffucoder eval intrinsic``: exact match and edit similarity of single-line infills on held-out corpus files.
- ``diffucoder eval calibrate``: the confidence gate's precision-vs-coverage curves on editor-like requests made
  through the language server's own completion path (:mod:`diffucoder_lsp.eval.calibrate`), the threshold that
  reaches a target precision, and optionally the model's ``calibration.json``.

``--filler oracle`` / ``--filler empty`` replace the model with the truth / an empty fill. They check the harness
on the user's machine (oracle must score 100%, empty near 0%) and need neither torch nor a model.
torch and the engine are imported only when a model is actually loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import sys
import time

from ..engine.options import ALGORITHMS
from .fill import add_model_options

log = logging.getLogger(__name__)

FILLERS = ("model", "ar", "ranked", "oracle", "empty")


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
    he.add_argument(
        "--unsafe-exec",
        action="store_true",
        help="run the filled programs without the bubblewrap sandbox where it cannot run here (recorded in the "
        "result); only on a machine you would let untrusted code run on",
    )
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
    _register_calibrate(sub)


def _register_calibrate(sub) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="precision vs coverage of the confidence gate; the threshold for a target precision",
        description="Make editor-like requests on held-out code (the rest of a line hidden), complete them as "
        "the language server does, and measure how well each confidence statistic separates right first "
        "lines from wrong ones.",
    )
    src = cal.add_mutually_exclusive_group(required=True)
    src.add_argument("--files", metavar="DIR", help="a folder of held-out source files")
    src.add_argument("--corpus", metavar="DIR", help="a corpus folder holding {split}.jsonl")
    cal.add_argument("--split", default="valid", help="corpus split (default: valid)")
    cal.add_argument("--limit", type=int, default=200, help="number of requests (default: 200)")
    cal.add_argument("--seed", type=int, default=0, help="seed of the request sampling (default: 0)")
    cal.add_argument(
        "--hide-lines",
        type=int,
        default=0,
        help="also hide this many lines after the cursor line (default: 0)",
    )
    cal.add_argument(
        "--target-precision",
        type=float,
        default=0.6,
        help="precision the threshold must reach (default: 0.6)",
    )
    cal.add_argument("--out", default="calibration_report.json", help="JSON report (default: %(default)s)")
    cal.add_argument("--plot", default=None, help="PNG of the precision-coverage curves (default: none)")
    cal.add_argument(
        "--write-calibration",
        metavar="DIR",
        default=None,
        help="write DIR/calibration.json (the best statistic's threshold), e.g. into the model folder",
    )
    cal.add_argument(
        "--settings",
        default=None,
        help='server settings as JSON, e.g. \'{"alg": "maskgit_plus"}\' (default: its defaults)',
    )
    add_model_options(cal)
    cal.set_defaults(func=run_calibrate)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument(
        "--filler",
        default="model",
        choices=FILLERS,
        help="model; ar: the same model decoding left to right from the prefix alone (the baseline an infill "
        "model must beat; give it the AR base, --model base); ranked: --width candidate lines decoded left to "
        "right, the one the code after the hole follows best (one-line holes); or a harness check: oracle "
        "(the truth) / empty (default: model)",
    )
    p.add_argument("--width", type=int, default=None, help="ranked: candidate lines per hole (default: 8)")
    p.add_argument(
        "--decoding",
        default="fast",
        choices=("fast", "plain"),
        help="fast: fill's and the server's decoding (context cache, tokens per step and blocks as the "
        "server's defaults); plain: one token per step over the full canvas (default: fast)",
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
    p.add_argument(
        "--alg",
        default=None,
        choices=ALGORITHMS,
        help="which masked position is revealed first (default: the engine's)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="positions eligible per block, in order (1: strictly left to right; default: the server's)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="also reveal positions at least this sure: in blocks of 1, the sure run after the first masked "
        "position (default: the server's)",
    )
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
    if args.filler == "ranked":
        from ..errors import BadInputError

        if getattr(args, "split", "single-line") != "single-line":
            raise BadInputError("--filler ranked fills one-line holes: use it with --split single-line")
        _check_positive("--width", args.width)
    from ..engine.infill import SamplingOptions
    from ..eval.runner import model_fill_fn, token_counter
    from ..model.loading import load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype, quant=args.quant)
    config = {
        "filler": args.filler,
        "model": str(getattr(lm, "name", args.model)),
        "path": str(getattr(lm, "path", "")),
        "device": str(getattr(lm, "device", args.device)),
        "dtype": str(getattr(lm, "dtype", args.dtype)),
        "quant": str(getattr(lm, "quant", args.quant)),
        "max_context_tokens": args.max_context_tokens,
    }
    if args.filler == "ar":
        from ..eval.runner import ar_fill_fn

        single = getattr(args, "split", "single-line") == "single-line"
        config["single_line"] = single
        fill = ar_fill_fn(lm, single_line=single, max_context_tokens=args.max_context_tokens)
        return fill, token_counter(lm), config
    if args.filler == "ranked":
        from ..engine import ranking
        from ..eval.runner import ranked_fill_fn
        from ..model.base_view import base_view

        config.update(
            width=args.width or ranking.WIDTH,
            prior_weight=ranking.PRIOR_WEIGHT,
            ranked_by="the adaptation's base" if base_view(lm) is not None else "the model itself",
        )
        fill = ranked_fill_fn(lm, width=args.width, max_context_tokens=args.max_context_tokens)
        return fill, token_counter(lm), config
    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "tokens_per_step": args.tokens_per_step,
            "temperature": args.temperature,
            "seed": args.seed,
            "alg": getattr(args, "alg", None),
            "block_size": getattr(args, "block_size", None),
            "threshold": getattr(args, "threshold", None),
        }.items()
        if v is not None
    }
    cache = False
    if getattr(args, "decoding", "plain") == "fast":
        from ..server.settings import Settings

        server = Settings()
        overrides.setdefault("tokens_per_step", server.tokens_per_step)
        if server.block_size:
            overrides.setdefault("block_size", server.block_size)
        if server.threshold is not None:
            overrides.setdefault("threshold", server.threshold)
        cache = server.context_cache
    options = SamplingOptions(**overrides)
    single = getattr(args, "split", "single-line") == "single-line"  # as the AR baseline: one line
    config.update(
        decoding=getattr(args, "decoding", "plain"),
        cache=cache,
        options=_as_dict(options),
        single_line=single,
    )
    fill = model_fill_fn(
        lm, options, max_context_tokens=args.max_context_tokens, cache=cache, single_line=single
    )
    return fill, token_counter(lm), config


def _as_dict(obj) -> dict:
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(vars(obj))


def run_humaneval(args) -> int:
    if args.unsafe_exec:
        import os

        from ..sandbox import UNSAFE_ENV

        os.environ[UNSAFE_ENV] = "1"
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
        "unsafe_exec": bool(args.unsafe_exec),  # programs may have run outside the sandbox
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
        f"(95% CI {summary['exact_match_ci95'][0]:.1f}-{summary['exact_match_ci95'][1]:.1f}) "
        f"edit similarity {summary['edit_similarity']:.1f}% "
        f"({summary['edit_similarity_ci95'][0]:.1f}-{summary['edit_similarity_ci95'][1]:.1f}); "
        f"fills {summary['mean_fill_chars']:.0f} chars (truth {summary['mean_truth_chars']:.0f}); "
        f"mean fill {summary['mean_fill_ms']:.0f} ms"
        + (f" ({summary['errors']} fills failed)" if summary["errors"] else "")
    )
    return 0


# --- calibrate -------------------------------------------------------------------------------------------------

# The server settings a calibration depends on (what calibration.json records under "decoding").
_DECODING_KEYS = (
    "alg",
    "temperature",
    "topP",
    "seed",
    "eosPenalty",
    "steps",
    "tokensPerStep",
    "threshold",
    "entropyBound",
    "blockSize",
    "endEarly",
    "contextCache",
    "cacheRefreshEvery",
    "maxTokens",
    "maxTokensSingleLine",
    "contextTokens",
    "prefixShare",
)


def _calibration_settings(args):
    """The language server's settings for these arguments, with the gate off (every suggestion is scored)."""
    import dataclasses
    import json

    from ..errors import BadInputError
    from ..server.settings import parse_settings

    raw = {"model": args.model, "device": args.device, "dtype": args.dtype, "quant": args.quant}
    if args.settings:
        try:
            extra = json.loads(args.settings)
        except ValueError as exc:
            raise BadInputError(f"--settings is not JSON: {exc}") from exc
        if not isinstance(extra, dict):
            raise BadInputError("--settings must be a JSON object")
        raw.update(extra)
    settings, problems = parse_settings(raw)
    if problems:
        raise BadInputError("; ".join(problems))
    return dataclasses.replace(settings, min_confidence=0.0)


def _server_completer(lm, settings):
    """(prefix, suffix) -> (what the editor would show, the suggestion's tokens), through the language
    server's completion path: its mode and span, context cut, decoding and post-processing."""
    from ..engine.confidence import SuggestionTokens
    from ..server.engine_client import EngineClient, completion_span
    from ..server.postprocess import postprocess

    client = EngineClient.for_model(lm)

    def complete(prefix: str, suffix: str):
        mode, max_tokens = completion_span(prefix, suffix, settings)
        fill = client.complete(
            prefix, suffix, settings=settings, max_tokens=max_tokens, should_stop=lambda: False
        )
        shown = postprocess(fill.texts[0], prefix, suffix, mode)
        # a fill without tokens (none written) is read as unscored by every statistic
        tokens = fill.tokens[0] if fill.tokens else SuggestionTokens(())
        return ("" if shown is None else shown.text), tokens

    return complete


def run_calibrate(args) -> int:
    from ..engine.confidence import write_calibration
    from ..errors import BadInputError
    from ..eval import calibrate as cal

    _check_positive("--limit", args.limit, allow_none=False)
    if args.hide_lines < 0:
        raise BadInputError(f"--hide-lines must be >= 0, got {args.hide_lines}")
    if not 0.0 <= args.target_precision <= 1.0:
        raise BadInputError(f"--target-precision must be in [0, 1], got {args.target_precision}")
    settings = _calibration_settings(args)
    existing = None
    if args.write_calibration and settings.rank_lines > 0:
        from ..engine.confidence import read_calibration

        existing = read_calibration(args.write_calibration)
        if existing is None:  # said before the run, not after its minutes
            raise BadInputError(
                f"no calibration.json in {args.write_calibration} to store the ranked gate beside: calibrate the "
                "default completions first (without rankLines)"
            )
    if args.files:
        docs, data = cal.documents_from_folder(args.files), f"files {args.files}"
    else:
        docs, data = cal.documents_from_corpus(args.corpus, args.split), f"corpus {args.corpus} {args.split}"
    requests = cal.sample_requests(docs, args.limit, seed=args.seed, hide_lines=args.hide_lines)
    if not requests:
        raise BadInputError(f"no eligible lines in {data}")
    from ..model.loading import load_model

    lm = load_model(settings.model, device=settings.device, dtype=settings.dtype, quant=settings.quant)
    started = time.time()
    outcomes = cal.run_requests(requests, _server_completer(lm, settings))
    summary = cal.summarize(outcomes, args.target_precision)
    decoding = {k: v for k, v in settings.to_json().items() if k in _DECODING_KEYS}
    run = {"data": data, "seed": args.seed, "hide_lines": args.hide_lines, "model": str(lm.name)}
    config = {
        "benchmark": "calibrate",
        **run,
        "limit": args.limit,
        "path": str(lm.path),
        "device": str(lm.device),
        "dtype": str(lm.dtype),
        "decoding": decoding,
        "wall_s": round(time.time() - started, 2),
    }
    cal.write_report(args.out, config=config, summary=summary, outcomes=outcomes)
    print(f"report written to {args.out}", file=sys.stderr)
    if args.plot:
        cal.write_plot(args.plot, summary)
        print(f"plot written to {args.plot}", file=sys.stderr)
    print(cal.format_report(summary))
    if args.write_calibration:
        calibration = cal.calibration_of(summary, decoding, run)
        if calibration is None:
            raise BadInputError(
                f"no threshold reaches precision {args.target_precision}: calibration.json not written"
            )
        if existing is not None:  # the ranked lines' gate, beside the default one (engine.confidence)
            ranked = dataclasses.replace(calibration, decoding={**decoding, "rankLines": settings.rank_lines})
            calibration = dataclasses.replace(existing, ranked=ranked)
        path = write_calibration(args.write_calibration, calibration)
        print(f"calibration written to {path}", file=sys.stderr)
    return 0
