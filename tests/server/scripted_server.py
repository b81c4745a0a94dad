"""The real language server with scripted completion text, for tests that need a completion to exist.

Run as a script (``SCRIPTED_SERVER_CMD`` in ``lsp_helpers``): it starts exactly what ``python -m
diffucoder_lsp.server`` starts, after wrapping :meth:`EngineClient.complete` so that every completion the engine
*finishes* reads :data:`SINGLE_LINE` (code after the cursor) or :data:`BLOCK` (otherwise), and so that every
denoising step takes at least :data:`MIN_STEP_S`. Everything else is real: the model loads in the background,
each request runs the real engine on the model thread (forward passes, ``should_stop`` checked between denoising
steps, so cancellation and superseding stop it as before), and the scheduler, cache, version checks and
post-processing are the server's own. Only the random weights' text is replaced, so the tests do not depend on
what an untrained checkpoint happens to write; the step pacing makes a 256-step job last over 5 s on any
machine, so a test that sees it end within a second or two knows it was stopped, not finished.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from diffucoder_lsp.server.engine_client import EngineClient
from diffucoder_lsp.server.postprocess import SINGLE, decide_mode, split_at_cursor

SINGLE_LINE = "scale * 2, "  # e.g. "total = compute(|a, b)" -> "total = compute(scale * 2, a, b)"
BLOCK = "return 42\n"
MIN_STEP_S = 0.02  # the engine asks should_stop once per denoising step


def scripted_text(prefix: str, suffix: str) -> str:
    line_prefix, line_suffix, _ = split_at_cursor(prefix, suffix)
    return SINGLE_LINE if decide_mode(line_prefix, line_suffix) == SINGLE else BLOCK


def install() -> None:
    real_complete = EngineClient.complete

    def complete(self, prefix, suffix, *args, should_stop, **kwargs):
        def paced_should_stop() -> bool:
            time.sleep(MIN_STEP_S)
            return should_stop()

        # Raises Cancelled when stopped between steps.
        fill = real_complete(self, prefix, suffix, *args, should_stop=paced_should_stop, **kwargs)
        return dataclasses.replace(fill, texts=[scripted_text(prefix, suffix)])

    EngineClient.complete = complete


if __name__ == "__main__":
    install()
    from diffucoder_lsp.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
