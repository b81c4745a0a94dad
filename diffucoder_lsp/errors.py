"""Errors whose message is meant for the user as it is (CLI: one line on stderr and exit code 2)."""


class BadInputError(ValueError):
    """Input the user must fix: no holes, an unreadable file, an invalid option."""


class CheckpointError(BadInputError):
    """A checkpoint is broken, unsupported or unsafe."""
