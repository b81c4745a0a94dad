"""The ``diffucoder`` command line.

Each subcommand lives in its own module under ``diffucoder_lsp.commands`` and exposes ``register(subparsers)``;
modules import torch lazily inside their handlers so ``diffucoder --help`` stays fast.

Exit codes (a contract tests and editors rely on): 0 success, 2 bad input (no holes, unreadable file, bad
option, broken or unsupported checkpoint) with a one-line reason on stderr, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .noise import quiet_bitsandbytes

# Subcommand modules, in help order. A module missing here is simply not offered.
COMMAND_MODULES = [
    "fill",
    "serve",
    "backend",
    "demo",
    "doctor",
    "make_tiny",
    "train",
    "eval",
    "bench",
    "analyze",
]

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffucoder", description="Code infilling with masked diffusion language models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug information to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"diffucoder_lsp.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("diffucoder_lsp.commands"):
                continue
            raise
        module.register(sub)
    document_defaults(parser)
    return parser


def _subparsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _subparsers(child)


def document_defaults(parser: argparse.ArgumentParser) -> None:
    """Make every ``--help`` show each option's default: append ``(default: X)`` to an option whose help does
    not already say it. Flags that are off unless given (``store_false`` ones included: their dest's True is
    the state without the flag, not the flag's), and options without a default, say nothing."""
    for p in _subparsers(parser):
        for action in p._actions:
            default = action.default
            if (
                not action.option_strings
                or action.help == argparse.SUPPRESS
                or default is None
                or default is False  # 0 and 0.0 are defaults to show: `in` would take them for False
                or default == argparse.SUPPRESS
                or isinstance(
                    action, (argparse._HelpAction, argparse._VersionAction, argparse._StoreFalseAction)
                )
                or "default" in (action.help or "").lower()
            ):
                continue
            action.help = f"{action.help} (default: %(default)s)" if action.help else "default: %(default)s"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_bitsandbytes()
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    from .errors import BadInputError

    if argv is None and args.command in ("fill", "serve", "backend", "bench", "demo", "eval", "analyze"):
        # A real process (not a caller passing argv): safe to change the thread's floating-point mode. Not for
        # a client of a backend (--model URL), which must run without torch.
        from .engine.remote import is_url

        if not is_url(getattr(args, "model", None)):
            try:
                from .model.devices import tune_cpu_runtime
            except ModuleNotFoundError as exc:  # no torch here: the language server may still use a backend
                logging.getLogger("diffucoder").debug("no CPU tuning: %s", exc)
            else:
                tune_cpu_runtime(flush_denormals=True)
    try:
        return int(args.func(args) or 0)
    except BadInputError as exc:
        print(f"diffucoder: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a runtime failure: one line, details with -v
        logging.getLogger("diffucoder").debug("runtime failure", exc_info=True)
        print(f"diffucoder: runtime error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
