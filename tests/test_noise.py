"""Known third-party noise is filtered from the first moment a command runs (issue: newcomer stumbles, item 11)."""

from __future__ import annotations

import logging

from diffucoder_lsp import cli, noise


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_bitsandbytes_kernel_warning_is_dropped_before_bitsandbytes_is_imported():
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    for f in list(logger.filters):
        logger.removeFilter(f)
    sink = _Collect()
    logger.addHandler(sink)
    try:
        noise.quiet_bitsandbytes()
        noise.quiet_bitsandbytes()  # idempotent: one filter
        assert len(logger.filters) == 1
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: no network")
        logger.warning("something else")
        assert sink.messages == ["something else"]
    finally:
        logger.removeHandler(sink)


def test_kernels_offline_notice_is_dropped():
    logger = logging.getLogger("kernels._internals.hf_hub")
    sink = _Collect()
    logger.addHandler(sink)
    try:
        noise.quiet_bitsandbytes()
        logger.warning(
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging "
            "Face Hub is in offline mode."
        )
        logger.warning("a real problem")
        assert sink.messages == ["a real problem"]
    finally:
        logger.removeHandler(sink)


def test_every_command_installs_the_filters_first(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "quiet_bitsandbytes", lambda: calls.append(1))
    assert cli.main([]) == cli.EXIT_BAD_INPUT  # no command: help, exit 2, after the filters went in
    assert calls == [1]
