"""``diffucoder backend``: serve one model over HTTP to many editors, batching their requests.

The model loads once (``--model``, ``--device``, ``--quant`` as for ``fill``); language servers, ``fill`` and the
demo reach it by URL (``--model http://HOST:PORT``), and any OpenAI client through ``/v1/completions``.
Concurrent requests are denoised together in padded batches of up to ``--max-batch`` rows. It listens on
127.0.0.1 unless ``--host`` says otherwise; a non-loopback address needs ``--token-file`` (a bearer token every
request but ``/health`` must carry). The API, limits and a team set-up behind TLS: docs/backend.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import BadInputError
from .fill import add_model_options


def register(sub) -> None:
    p = sub.add_parser(
        "backend",
        help="serve a model over HTTP to many editors (batched; OpenAI-compatible completions)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port)")
    add_model_options(p)
    p.add_argument("--token-file", default=None, help="file holding the bearer token clients must send")
    p.add_argument("--max-batch", type=int, default=16, help="rows denoised together in one pass")
    p.add_argument(
        "--gather-ms", type=float, default=5.0, help="how long a batch waits for more requests to join it"
    )
    p.add_argument(
        "--context-stores",
        type=int,
        default=32,
        help="editor documents (X-Request-Group) whose last context is kept for their next request (0: none)",
    )
    p.add_argument("--max-queue", type=int, default=256, help="rows that may wait; beyond, 429")
    p.add_argument(
        "--max-context-tokens",
        type=int,
        default=8192,
        help="the largest context window a request may ask for",
    )
    p.set_defaults(func=run)


def config_from(args: argparse.Namespace):
    from ..backend.config import BackendConfig, Limits, read_token

    token = read_token(args.token_file) if args.token_file else None
    try:
        limits = Limits(max_queue=args.max_queue, max_context_tokens=args.max_context_tokens)
    except BadInputError as exc:
        raise BadInputError(f"--{str(exc).replace('_', '-')}") from None
    return BackendConfig(
        host=args.host,
        port=args.port,
        token=token,
        max_batch=args.max_batch,
        gather_ms=args.gather_ms,
        context_stores=args.context_stores,
        limits=limits,
    )


def run(args: argparse.Namespace) -> int:
    from ..engine.remote import is_url

    if is_url(args.model):
        raise BadInputError("--model names a checkpoint to serve here, not another backend's URL")
    config = config_from(args)  # bad flags before paying for a model load
    from .serve import cap_kernel_cache

    cap_kernel_cache()
    import uvicorn

    from ..backend.app import build_app
    from ..model.loading import load_model

    lm = load_model(args.model, device=args.device, dtype=args.dtype, quant=args.quant)
    app = build_app(lm, config)
    logging.getLogger("diffucoder_lsp").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    print(
        f"diffucoder backend: serving {lm.name} ({lm.device}) on http://{config.host}:{config.port}"
        + (" (bearer token required)" if config.token else ""),
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_config=None,  # our logging: standard error, never standard output
        log_level="debug" if args.verbose else "warning",
        access_log=bool(args.verbose),
        timeout_graceful_shutdown=5,
    )
    return 0
