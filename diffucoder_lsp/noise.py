"""Filters for log messages third-party packages emit that say nothing to our users.

Kept free of heavy imports (no torch): the CLI installs them before any command runs, and filters on a named
logger apply from then on, whether that package is imported later or never.
"""

from __future__ import annotations

import logging

# Messages bitsandbytes logs that are expected in our use and would otherwise flood stderr (diffucoder_lsp.model.quant
# says why each is expected).
_NOISE = {
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # bitsandbytes asks the `kernels` package for its CPU kernel on import; offline (HF_HUB_OFFLINE=1, as our
    # tests and many users run) `kernels` says on every start that it skipped a check nobody asked for
    "kernels._internals.hf_hub": ("Skipping publisher trust check",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_bitsandbytes() -> None:
    """Install the filters for bitsandbytes' expected noise on its loggers, whether or not it is imported yet.

    Other packages import bitsandbytes on their own when it is installed (to see whether 4-bit is possible), so
    its "Failed to load CPU gemm_4bit_forward from kernels-community" warning appeared on every start of a
    command that asked for no quantization at all. The CLI calls this first thing; it imports nothing."""
    for name, prefixes in _NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
