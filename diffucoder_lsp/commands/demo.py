"""``diffucoder demo [FILE]``: a terminal app that shows a diffusion model filling code, step by step.

Opens FILE (holes written as ``<|mask|>``, or marked in the app) or a built-in sample, and runs fills with the
bundled model on the CPU unless ``--model`` names another checkpoint, or a backend's URL (``http://host:port``,
``diffucoder backend``; token from ``DIFFUCODER_TOKEN``). The model loads in the background: the app
is usable at once. Needs the ``tui`` extra (textual).

Keys: f fill, x cancel, left/right step back/forward, home/end first/last step, p play, h heat (confidence)
colours, m mark the selected lines as a hole, u undo, e edit, s settings (ctrl+s apply, esc cancel), q quit.

While the app owns the terminal, log records are held back instead of written to stderr (a warning printed
over the screen would corrupt it); they are written out when the app exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BadInputError
from .fill import (
    DECODINGS,
    add_model_options,
    add_sampling_options,
    hole_settle_tests,
    parse_length,
    read_input,
    resolve_decoding,
    sampling_options,
)

# The demo shows the order a model reveals tokens in: a block wide enough to see it, and narrow enough that a
# step stays cheap. A step computes every position of its block, so on a 2-core CPU the built-in sample's 96
# steps took 15.8 s in blocks of 32 and 11.5 s in blocks of 8 (`diffucoder fill --block-size N --json`).
DEMO_BLOCK_SIZE = 8


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="watch the model fill code in a terminal app",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", default=None, help="a source file (default: a built-in sample)")
    add_model_options(p)
    add_sampling_options(p, modes=True)
    p.add_argument(
        "--decoding",
        choices=DECODINGS,
        default=None,
        help="fast (default): fill's and the editor's decoding (context cache, ending at the end token) in blocks "
        "of 8 so that the order shows (the editor's 1 for a model with a learned lookahead, as the bundled one, "
        "which writes well only left to right), holes stopping once the editor's cut is decided, "
        "a first fill in seconds; plain: a full-canvas pass per step, every hole at once (slower, the textbook "
        "loop); exact: the reference decoder. Explicit flags override the mode's values",
    )
    p.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="context key/value cache; default: on with --decoding fast",
    )
    p.add_argument("--length", type=parse_length, default="auto", help="tokens per hole, or auto (trim pads)")
    p.add_argument("--context-tokens", type=int, default=None, help="context window budget in tokens")
    p.set_defaults(func=run)


def build_app(args: argparse.Namespace):
    """The app for these arguments, not yet running (tests inspect it; ``run`` runs it)."""
    try:
        from ..tui import DemoApp, DemoSettings, EngineRunner, RemoteRunner
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("textual"):
            raise BadInputError("the demo needs textual: pip install 'diffucoder-lsp[tui]'") from exc
        raise
    if args.file == "-":
        raise BadInputError("the demo is interactive: pass a file path, not standard input")
    source = read_input(args.file) if args.file else None
    lookahead_blocks = None
    if (
        args.block_size is None
        and args.decoding in (None, "fast")
        and not args.exact
        and args.alg != "origin"
    ):
        args.block_size = DEMO_BLOCK_SIZE  # the editor's blocks of 1 would hide the order the demo is for
        # ...except for a model that writes well only in that order (the bundled default: see EngineRunner)
        from ..server.settings import Settings

        lookahead_blocks = Settings().block_size or None
    use_cache = resolve_decoding(args)
    settings = DemoSettings(options=sampling_options(args), length=args.length)
    from ..engine.remote import is_url

    if is_url(args.model):  # a backend (diffucoder backend) fills; the token comes from DIFFUCODER_TOKEN
        runner = RemoteRunner(args.model, max_context_tokens=args.context_tokens)
    else:
        runner = EngineRunner(
            args.model,
            device=args.device,
            dtype=args.dtype,
            quant=args.quant,
            max_context_tokens=args.context_tokens,
            cache=use_cache,
            lookahead_block_size=lookahead_blocks,
            settle=hole_settle_tests,
            cut=editor_cut,
        )
    return DemoApp(runner, source, filename=args.file, settings=settings)


class _HeldRecords(logging.Handler):
    """Keeps the last records while the app runs."""

    def __init__(self, keep: int = 200) -> None:
        super().__init__(logging.DEBUG)
        self.records: deque[logging.LogRecord] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def terminal_logs_held() -> Iterator[None]:
    """Detach root log handlers that write to the terminal; replay what they missed afterwards."""
    root = logging.getLogger()
    streams = {sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__}
    terminal = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and h.stream in streams]
    held = _HeldRecords()
    for handler in terminal:
        root.removeHandler(handler)
    root.addHandler(held)
    try:
        yield
    finally:
        root.removeHandler(held)
        for handler in terminal:
            root.addHandler(handler)
            for record in held.records:
                if record.levelno >= handler.level:
                    handler.handle(record)


def run(args: argparse.Namespace) -> int:
    app = build_app(args)
    with terminal_logs_held():
        app.run()
    return 0 if app.return_code is None else int(app.return_code)


def editor_cut(text: str, fills: list[str]) -> list[str]:
    """Each hole's fill as the editor would insert it (what ``fill`` prints): the demo strikes through the rest."""
    from ..engine.canvas import DEFAULT_MARKER, split_holes
    from ..server.postprocess import edited_text

    return edited_text(split_holes(text, DEFAULT_MARKER), fills)[1]
