"""``diffucoder fill FILE|-``: print the file with every hole filled (or a JSON record with ``--json``).

Decoding (``--decoding``) defaults to ``fast``, the language server's own defaults (context key/value cache,
a few tokens per step, block decoding, ending at the end token), so that the command shows what the editor
would get, at its speed. ``plain`` is this command's earlier default (a full-canvas pass per step, one token
per step, every hole at once) and ``exact`` the reference decoder (also ``--exact``). Each flag given
explicitly (``--tokens-per-step``, ``--block-size``, ``--cache``/``--no-cache``, ``--threshold``...) overrides
the mode's value.

``--json`` also gives each hole a ``confidence_score`` in [0, 1]: how sure the model is of it, under the
statistic the language server's confidence gate uses (``confidence_statistic``; see
:mod:`diffucoder_lsp.engine.confidence`).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import BadInputError
from ..server.postprocess import edited_text


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Model selection flags shared by every command that loads a model."""
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument(
        "--quant", choices=["none", "8bit", "4bit"], default="none", help="bitsandbytes quantization"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32", "fp16"], default="auto")


def add_sampling_options(p: argparse.ArgumentParser, *, modes: bool = False) -> None:
    """Sampling flags. ``modes``: the command has ``--decoding`` modes, which decide the tokens per step and the
    block size left unset (None here; see :func:`resolve_decoding`)."""
    fast = _server_defaults()
    p.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: tokens / --tokens-per-step)"
    )
    p.add_argument(
        "--tokens-per-step",
        type=int,
        default=None if modes else 1,
        help="used when --steps is not given; with --threshold or --entropy-bound, the least revealed per step"
        + (f" (default: {fast.tokens_per_step} with --decoding fast, else 1)" if modes else " (default: 1)"),
    )
    p.add_argument("--alg", choices=["entropy", "maskgit_plus", "topk_margin", "origin"], default="entropy")
    p.add_argument(
        "--alg-temp", type=float, default=0.0, help="sample positions instead of greedy (0 = greedy)"
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature (0: greedy, as the language server)",
    )
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eos-penalty", type=float, default=0.0, help="subtracted from eos/pad logits")
    p.add_argument("--exact", action="store_true", help="reference decoder: full canvas, reference schedule")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="parallel unmasking: also reveal all this sure "
        "(in blocks of 1: the sure run after the first, in order)",
    )
    p.add_argument(
        "--entropy-bound",
        type=float,
        default=None,
        help="entropy-bounded unmasking: reveal the surest run whose entropies sum to at most this (nats) "
        "beyond their largest (instead of --threshold)",
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="block decoding: fill the holes' masks in order, this many at a time (default: "
        + (f"{fast.block_size} with --decoding fast, else all at once)" if modes else "all at once)"),
    )


def sampling_options(args: argparse.Namespace):
    from ..engine.options import SamplingOptions  # not the sampler: a remote fill must not import torch

    return SamplingOptions(
        steps=args.steps,
        tokens_per_step=args.tokens_per_step,
        alg=args.alg,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        alg_temp=args.alg_temp,
        seed=args.seed,
        exact=args.exact,
        eos_penalty=args.eos_penalty,
        threshold=args.threshold,
        entropy_bound=args.entropy_bound,
        block_size=args.block_size,
    )


def parse_length(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("length must be at least 1")
    return n


def register(sub) -> None:
    p = sub.add_parser("fill", help="fill the <|mask|> holes of a file", description=__doc__)
    fast = _server_defaults()
    p.add_argument("file", help="a file with <|mask|> holes, or - for standard input")
    add_model_options(p)
    add_sampling_options(p, modes=True)
    p.add_argument("--length", type=parse_length, default="auto", help="tokens per hole, or auto (trim pads)")
    p.add_argument("--marker", default="<|mask|>", help="the hole marker in the text")
    p.add_argument("--context-tokens", type=int, default=None, help="context window budget in tokens")
    p.add_argument(
        "--decoding",
        choices=DECODINGS,
        default=None,
        help="fast (default): the language server's decoding (cache, "
        f"{fast.tokens_per_step} tokens per step, blocks of {fast.block_size}); "
        "plain: a full-canvas pass per step, one token per step, all holes at once; exact: the reference "
        "decoder (= --exact). Explicit flags override the mode's values",
    )
    p.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="context key/value cache (fast; approximate); default: on with --decoding fast",
    )
    p.add_argument(
        "--refresh-every", type=int, default=0, help="with --cache: full pass every R steps (0 = never)"
    )
    p.add_argument(
        "--no-end-early",
        dest="end_early",
        action="store_false",
        help="denoise an auto hole to its end even after the model wrote its end token (slower; the default "
        "stops there, as what follows is cut)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="with --length auto: print what the model wrote, without the editor's rules (a hole written "
        "mid-line is one line; a block stops where it leaves the hole's scope or repeats the next line)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON record instead of the text")
    p.add_argument(
        "--confidence-statistic",
        default=None,
        help="with --json: the statistic of each hole's confidence_score (default: the model's calibration's, "
        "else the server's)",
    )
    p.set_defaults(func=run)


DECODINGS = ("fast", "plain", "exact")


def _server_defaults():
    """The language server's default settings: ``--decoding fast`` is its decoding, kept in step with it."""
    from ..server.settings import Settings

    return Settings()


def fast_decoding():
    """The language server's decoding, as :func:`~diffucoder_lsp.engine.options.resolve_decoding` takes it."""
    from ..engine.options import Decoding

    server = _server_defaults()
    return Decoding(False, server.tokens_per_step, server.block_size or None, server.context_cache)


def resolve_decoding(args: argparse.Namespace) -> bool:
    """Fill in ``args`` from the decoding mode (``--decoding``, or ``--exact``) where no flag was given; returns
    whether to use the context key/value cache. ``fast`` takes the language server's defaults."""
    from ..engine.options import resolve_decoding as resolve

    decoding = resolve(
        args.decoding,
        exact=args.exact,
        cache=args.cache,
        tokens_per_step=args.tokens_per_step,
        block_size=args.block_size,
        alg=args.alg,
        bounded=args.entropy_bound is not None,
        fast=fast_decoding(),
    )
    args.exact = decoding.exact
    args.tokens_per_step = decoding.tokens_per_step
    args.block_size = decoding.block_size
    return decoding.cache


def read_input(path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if b"\0" in data[:8192]:
        raise BadInputError(f"{path} looks like a binary file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def run(args: argparse.Namespace) -> int:
    text = text_in = read_input(args.file)
    use_cache = resolve_decoding(args)
    options = sampling_options(args)
    from ..engine.confidence import STATISTICS
    from ..engine.remote import is_url

    if args.confidence_statistic is not None and args.confidence_statistic not in STATISTICS:
        raise BadInputError(
            f"unknown --confidence-statistic {args.confidence_statistic!r}; choose one of {', '.join(STATISTICS)}"
        )
    if args.refresh_every < 0:
        raise BadInputError("--refresh-every must be >= 0")
    if is_url(args.model):
        return run_remote(args, text, use_cache)
    from ..engine.infill import infill, split_holes

    split_holes(text, args.marker)  # bad input before paying for a model load
    from ..model.loading import load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype, quant=args.quant)
    denoiser = None
    if use_cache:
        from ..engine.cache import CachedContextDenoiser

        denoiser = CachedContextDenoiser(lm.model, args.refresh_every)
    result = infill(
        lm,
        text,
        length=args.length,
        options=options,
        marker=args.marker,
        max_context_tokens=args.context_tokens,
        denoiser=denoiser,
        end_early=None if args.end_early else False,
        settle=settle_tests(text, args),
    )
    text, shown = result.text, None
    if args.length == "auto" and not args.raw:
        text, shown = edited_text(split_holes(text_in, args.marker), [h.text for h in result.holes])
    if args.json:
        record = with_confidence(result, lm, options.alg, args.confidence_statistic)
        if shown is not None:  # the holes' own records keep what the model wrote
            record["text"] = text
            for hole, edited in zip(record["holes"], shown, strict=True):
                hole["shown"] = edited
        json.dump(record, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def settle_tests(text: str, args: argparse.Namespace):
    """One hole printed as the editor cuts it: stop denoising once what is written decides the cut (a block
    that left its scope, a mid-line hole that reached its line's end). Several holes' cuts depend on each
    other's fills, the raw fills and the reference decoder are printed whole: those decode every position."""
    from ..engine.canvas import split_holes  # torch-free: a backend's client calls this too

    if len(split_holes(text, args.marker)) != 2 or args.length != "auto" or args.raw or args.exact:
        return None
    return hole_settle_tests(text, args.marker)


def hole_settle_tests(text: str, marker: str = "<|mask|>") -> list:
    """Per hole of ``text``, whether what it wrote so far decides where the editor would cut it
    (:func:`~diffucoder_lsp.server.postprocess.settled`, the other holes left as markers). ``fill`` asks it for a
    lone hole; the demo for every hole, whose fill then stops there instead of writing on to its full width."""
    from ..engine.canvas import split_holes
    from ..server.postprocess import settled

    parts = split_holes(text, marker)
    tests = []
    for j in range(len(parts) - 1):
        prefix, suffix = marker.join(parts[: j + 1]), marker.join(parts[j + 1 :])
        tests.append(lambda written, p=prefix, s=suffix: settled(written, p, s))
    return tests


def remote_body(args: argparse.Namespace, text: str, use_cache: bool) -> dict:
    """The backend's ``/v1/infill`` body for these (resolved) flags: every decoding option explicit, so the
    backend decodes what this command would have decoded in-process."""
    return {
        "text": text,
        "length": args.length,
        "marker": args.marker,
        "decoding": "exact" if args.exact else "plain",
        "steps": args.steps,
        "tokens_per_step": args.tokens_per_step,
        "alg": args.alg,
        "alg_temp": args.alg_temp,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "eos_penalty": args.eos_penalty,
        "threshold": args.threshold,
        "entropy_bound": args.entropy_bound,
        "block_size": args.block_size,
        "cache": use_cache,
        "refresh_every": args.refresh_every,
        "end_early": bool(args.end_early),
        "context_tokens": args.context_tokens,
        "raw": args.raw,
        "confidence_statistic": args.confidence_statistic,
        "settle": settle_tests(text, args) is not None,
    }


def run_remote(args: argparse.Namespace, text: str, use_cache: bool) -> int:
    """``--model http(s)://...``: the same fill on a backend (``diffucoder backend``); prints what a local run
    prints. The token comes from ``DIFFUCODER_TOKEN``. Never imports torch."""
    from ..engine.remote import RemoteBackend, RemoteConfig

    if not args.marker or args.marker not in text:  # bad input before a round trip
        raise BadInputError(f"no holes: the text contains no {args.marker!r} marker")
    local = [f"--{k}" for k, v in (("device", args.device), ("dtype", args.dtype), ("quant", args.quant))]
    given = [
        flag
        for flag, (v, d) in zip(
            local, ((args.device, "auto"), (args.dtype, "auto"), (args.quant, "none")), strict=True
        )
        if v != d
    ]
    if given:
        raise BadInputError(
            f"{', '.join(given)} cannot be used with a backend URL: the backend chose its model's"
        )
    client = RemoteBackend(RemoteConfig(args.model))
    try:
        record = client.infill(remote_body(args, text, use_cache))
    finally:
        client.close()
    if args.json:
        json.dump(record, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(record["text"])
    sys.stdout.flush()
    return 0


def with_confidence(result, lm, alg: str, name: str | None) -> dict:
    """The result's JSON record with each hole's ``confidence_score`` (see
    :func:`~diffucoder_lsp.engine.confidence.infill_record`)."""
    from ..engine.confidence import infill_record

    return infill_record(result, lm, alg, name)
