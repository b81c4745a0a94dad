"""``diffucoder serve``: run the language server over stdio (default) or TCP (``--tcp HOST:PORT``).

Standard output is the protocol channel. Before serving, the process keeps a private copy of file descriptor 1
for the protocol and points fd 1 (and ``sys.stdout``) at standard error, so a stray print from any library
(or C code) can never corrupt the stream; logs go to standard error and, once initialized, to the client's log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import BadInputError


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the language server (stdio, or --tcp)", description=__doc__)
    p.add_argument("--tcp", metavar="HOST:PORT", default=None, help="listen on TCP instead of stdio")
    p.add_argument(
        "--stdio",
        action="store_true",
        help="serve over stdio (the default; accepted because LSP clients pass it)",
    )
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32", "fp16"], default=None)
    p.add_argument(
        "--quant", choices=["none", "8bit", "4bit"], default=None, help="bitsandbytes quantization"
    )
    p.set_defaults(func=run)


def parse_tcp(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"--tcp expects HOST:PORT (e.g. 127.0.0.1:2087), got {value!r}")
    return host or "127.0.0.1", int(port)


def base_settings(args: argparse.Namespace):
    from ..server.settings import parse_settings, problems_message

    raw = {k: getattr(args, k) for k in ("model", "device", "dtype", "quant") if getattr(args, k) is not None}
    settings, problems = parse_settings(raw)
    if problems:
        raise BadInputError(problems_message(problems))
    return settings


# oneDNN (torch's CPU matmuls) keeps a compiled kernel per matmul shape, up to 1024 by default. A server sees
# ever new shapes (the active positions differ per request), so that cache only grows: capped at 64, the
# bundled server's peak RSS over scripts/bench_lsp.py -n 16 --typing 3 was 485 MB instead of 521 MB, at the
# same latency. Read when oneDNN first runs, so it must be set before the model is used; a user's value wins.
ONEDNN_CACHE = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


def cap_kernel_cache(environ=os.environ) -> None:
    environ.setdefault(*ONEDNN_CACHE)


def run(args: argparse.Namespace) -> int:
    cap_kernel_cache()
    settings = base_settings(args)
    tcp = parse_tcp(args.tcp) if args.tcp else None
    from ..server.app import build_server

    logging.getLogger("diffucoder_lsp").setLevel(logging.INFO if not args.verbose else logging.DEBUG)
    server = build_server(settings)
    if tcp is not None:
        server.start_tcp(*tcp)
        return 0
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    server.start_io(sys.stdin.buffer, protocol_out)
    return 0
