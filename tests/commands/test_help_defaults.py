"""Every ``--help`` shows each option's default (issue: newcomer stumbles, item 10)."""

from __future__ import annotations

import argparse

from diffucoder_lsp.cli import _subparsers, build_parser


def test_every_option_with_a_default_says_it_in_its_help():
    missing = []
    for parser in _subparsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in text.lower():
                missing.append(f"{parser.prog} {action.option_strings[0]}")
    assert missing == []


def test_a_default_is_shown_with_its_value():
    parser = build_parser()
    sft = next(p for p in _subparsers(parser) if p.prog.endswith("train sft"))
    text = sft.format_help()
    assert "--holdout-fraction" in text and "(default: 0.1)" in text
