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
            if isinstance(action, (argparse._HelpAction, argparse._StoreFalseAction)):
                continue  # a store_false flag is off unless given: its dest's True is not its default
            if action.help == argparse.SUPPRESS:
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


def test_a_flag_that_turns_something_off_does_not_claim_to_be_on():
    """``train sft --full`` (``store_false`` into ``lora``) used to read "train every weight (default: True)"
    while LoRA is the default."""
    sft = next(p for p in _subparsers(build_parser()) if p.prog.endswith("train sft"))
    full = next(a for a in sft._actions if "--full" in a.option_strings)
    assert "default: True" not in sft._get_formatter()._expand_help(full)
    assert "(default)" in next(a for a in sft._actions if "--lora" in a.option_strings).help
