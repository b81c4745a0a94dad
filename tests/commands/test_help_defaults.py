"""Every ``--help`` shows each option's default (issue: newcomer stumbles, item 10)."""

from __future__ import annotations

import argparse

from diffucoder_lsp.cli import _subparsers, build_parser


def test_every_option_with_a_default_says_it_in_its_help():
    missing = []
    for parser in _subparsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            # identity, not `in`: 0 == False, and a default of 0 (--window-fraction, --humaneval) was hidden
            if not action.option_strings or action.default is None or action.default is False:
                continue
            if action.default == argparse.SUPPRESS:
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


def test_a_zero_default_is_shown():
    sft = next(p for p in _subparsers(build_parser()) if p.prog.endswith("train sft"))
    fmt = sft._get_formatter()
    for flag, shown in (("--window-fraction", "(default: 0.0)"), ("--humaneval", "(default: 0)")):
        action = next(a for a in sft._actions if flag in a.option_strings)
        assert shown in fmt._expand_help(action), flag


def test_the_training_defaults_in_help_are_the_ones_the_runs_apply():
    """sft and grpo share --steps/--lr/--ckpt-every, which default to None on the command line (the args
    dataclass applies the command's own value): their help must say the value the dataclass applies."""
    from diffucoder_lsp.train.finetune_cli import GRPO_DEFAULTS, SFT_DEFAULTS
    from diffucoder_lsp.train.grpo import GRPOArgs
    from diffucoder_lsp.train.sft import SFTArgs

    for name, cls, defaults in (
        ("train sft", SFTArgs, SFT_DEFAULTS),
        ("train grpo", GRPOArgs, GRPO_DEFAULTS),
    ):
        args = cls(out="x")
        assert defaults["steps"] == args.steps and defaults["ckpt_every"] == args.ckpt_every
        parser = next(p for p in _subparsers(build_parser()) if p.prog.endswith(name))
        text = " ".join(parser.format_help().split())
        assert f"optimizer steps (default: {args.steps})" in text
        assert f"(default: {args.ckpt_every})" in text
        assert f"peak learning rate (default: {defaults['lr']})" in text
