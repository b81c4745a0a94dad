"""Errors whose message is meant for the user as it is (CLI: one line on stderr and exit code 2)."""

from __future__ import annotations

from typing import Any


class BadInputError(ValueError):
    """Input the user must fix: no holes, an unreadable file, an invalid option."""


class CheckpointError(BadInputError):
    """A checkpoint is broken, unsupported or unsafe."""


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a one-line message: a pasted megabyte (a setting, a config
    field) must not become a megabyte error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
