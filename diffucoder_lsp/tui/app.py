"""The demo application: a thin Textual ``App`` that opens the demo screen on one document.

All behaviour lives in :class:`~diffucoder_lsp.tui.screens.demo.DemoScreen` and its widgets; the app only carries
what the screen is built from (the runner, the text, the settings, a clock that tests can fix) and the title.

Without a file the demo opens a short sample with two holes already marked: two holes show joint infilling
(both denoised together, each seeing the other's progress), and the functions are ones any code model has seen
many times, so a real checkpoint fills them sensibly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import App
from textual.screen import Screen

from .render import lexer_name
from .runner import DemoSettings, FillRunner
from .screens.demo import DemoScreen

SAMPLE_NAME = "sample.py"

SAMPLE_CODE = '''\
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number (fibonacci(0) == 0)."""
    a, b = 0, 1
    for _ in range(n):
<|mask|>
    return a


def is_palindrome(text: str) -> bool:
    """True when text reads the same backwards, ignoring case and spaces."""
    cleaned = <|mask|>
    return cleaned == cleaned[::-1]


if __name__ == "__main__":
    print([fibonacci(i) for i in range(10)])
    print(is_palindrome("Never odd or even"))
'''


class DemoApp(App):
    """``diffucoder demo``: watch a masked diffusion model fill the holes of a file."""

    TITLE = "diffucoder demo"
    ENABLE_COMMAND_PALETTE = False  # every action has a key; the palette's own key would shadow none of them

    def __init__(
        self,
        runner: FillRunner,
        source: str | None = None,
        *,
        filename: str | None = None,
        settings: DemoSettings | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        if source is None:
            source, filename = SAMPLE_CODE, SAMPLE_NAME
        self.runner = runner
        self.source = source
        self.filename = filename or "untitled"
        self.settings = settings or DemoSettings()
        self.clock = clock
        self.sub_title = self.filename

    def get_default_screen(self) -> Screen:
        return DemoScreen(
            self.runner,
            self.source,
            lexer=lexer_name(self.filename, self.source),
            settings=self.settings,
            clock=self.clock,
        )

    @property
    def demo(self) -> DemoScreen:
        """The demo screen (the bottom of the stack, even while the settings dialog is open)."""
        return self.screen_stack[0]  # type: ignore[return-value]
