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

# The exact shape of DiffuCoder-7B / Dream-7B (facts doc): random weights of it measure GPU speed and memory.
PRESETS = {
    "dream-7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rope_theta": 1e6,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
    }
}


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
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a real model's shape (dream-7b: 7.6B parameters, 15 GB in bf16); --layers still applies",
    )
    p.add_argument("--device", default="cpu", help="where the random weights are made (cuda: much faster)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model.tiny import write_tiny_checkpoint

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out} exists and is not an empty folder: choose a new path")
    overrides: dict[str, int | float] = dict(PRESETS[args.preset]) if args.preset else {}
    if args.hidden_size is not None and args.preset:
        raise BadInputError("--hidden-size cannot be combined with --preset (the preset fixes the shape)")
    if args.hidden_size is not None:
        if args.hidden_size % 8:
            raise BadInputError("--hidden-size must be a multiple of 8 (4 attention heads of even size)")
        overrides["hidden_size"] = args.hidden_size
        overrides["intermediate_size"] = 2 * args.hidden_size
    if args.layers is not None:
        overrides["num_hidden_layers"] = args.layers
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise BadInputError(f"unknown device {args.device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda: no CUDA device is available here")
    path = write_tiny_checkpoint(
        out, shards=args.shards, seed=args.seed, dtype=dtype, device=device, **overrides
    )
    print(f"wrote a tiny random checkpoint to {path} (noise output; for testing the tools)", file=sys.stderr)
    print(str(path))
    return 0
