"""``diffucoder make-tiny OUT``: write a small random checkpoint in the exact layout of a DiffuCoder checkpoint.

Why a command: to try the whole tool chain (fill, serve, the editor plugins, training scripts) on a machine with
no 15 GB download, and to reproduce loader bugs with a checkpoint anyone can regenerate from a seed. The output
is noise by design; only the format is real (config.json with model_type "Dream", sharded safetensors with an
index, tokenizer.json, side files, and a remote-code .py file that the loader must never execute).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import BadInputError


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def register(sub) -> None:
    p = sub.add_parser(
        "make-tiny", help="write a tiny random checkpoint (for trying the tools)", description=__doc__
    )
    p.add_argument("out", help="folder to create (must be empty or absent)")
    p.add_argument(
        "--shards", type=_positive, default=2, help="number of safetensors shards (1 = single file)"
    )
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="dtype of the stored weights")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    p.add_argument(
        "--hidden-size",
        type=_positive,
        default=None,
        help="override the hidden size (default 64; multiple of 8)",
    )
    p.add_argument("--layers", type=_positive, default=None, help="override the number of layers (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model.tiny import write_tiny_checkpoint

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out} exists and is not an empty folder: choose a new path")
    overrides: dict[str, int] = {}
    if args.hidden_size is not None:
        if args.hidden_size % 8:
            raise BadInputError("--hidden-size must be a multiple of 8 (4 attention heads of even size)")
        overrides["hidden_size"] = args.hidden_size
        overrides["intermediate_size"] = 2 * args.hidden_size
    if args.layers is not None:
        overrides["num_hidden_layers"] = args.layers
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    path = write_tiny_checkpoint(out, shards=args.shards, seed=args.seed, dtype=dtype, **overrides)
    print(f"wrote a tiny random checkpoint to {path} (noise output; for testing the tools)", file=sys.stderr)
    print(str(path))
    return 0
