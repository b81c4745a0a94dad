"""The Neovim plugin on a real terminal screen: tmux runs Neovim 0.11 with the plugin against the real server
(tiny checkpoint); keys go in with ``send-keys``, and ``capture-pane`` reads the screen back.

Checks: the statusline shows the plugin's status, typing in insert mode brings ghost text drawn after the cursor
in the ghost highlight (a colour of its own here), <Tab> turns exactly that text into buffer text (same characters
on screen, no ghost colour left), and the file written by :w has it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from editor_support import NVIM_PLUGIN, SERVER_CMD, isolated_env, nvim_binary, plugin_copy

pytestmark = pytest.mark.e2e

GHOST_SGR = "\x1b[38;5;201m"
PROMPT = "result = "


class Tmux:
    def __init__(self, socket: Path, env: dict[str, str]):
        self.socket, self.env = socket, env

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-S", str(self.socket), *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, f"tmux {args}: {proc.stderr}"
        return proc.stdout

    def screen(self, escapes: bool = False) -> list[str]:
        return self("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "dc").split("\n")

    def wait_for(self, predicate, timeout: float, what: str, escapes: bool = False) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen(escapes)
            if predicate(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; screen:\n" + "\n".join(self.screen()))
            time.sleep(0.1)


def plain(line: str) -> str:
    return re.sub(r"\x1b\[[0-9;:]*[A-Za-z]", "", line)


def find_line(lines: list[str], needle: str) -> str | None:
    return next((line for line in lines if needle in plain(line)), None)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_ghost_text_on_a_tmux_screen(tmp_path, tiny_ckpt):
    nvim = nvim_binary()
    plugin = plugin_copy(tmp_path / "plugin")
    source = tmp_path / "demo.py"
    source.write_text("def greet(name):\n    return name\n\n")
    env = isolated_env(
        tmp_path / "home",
        DC_PLUGIN=str(plugin),
        DC_SERVER_CMD=json.dumps(SERVER_CMD),
        DC_SETTINGS=json.dumps({"model": str(tiny_ckpt), "device": "cpu"}),
        TERM="xterm-256color",
    )
    tmux = Tmux(tmp_path / "tmux.sock", env)
    init = NVIM_PLUGIN / "tests" / "tmux_init.lua"
    cmd = f"{nvim} --clean -u {init} -n {source}"
    tmux("-f", "/dev/null", "new-session", "-d", "-s", "dc", "-x", "100", "-y", "20", cmd)
    try:
        tmux("set-option", "-t", "dc", "default-terminal", "tmux-256color")
        tmux.wait_for(
            lambda s: any("DiffuCoder ready" in line for line in s), 120, "the model in the statusline"
        )
        tmux("send-keys", "-t", "dc", "G", "o")
        tmux("send-keys", "-t", "dc", "-l", PROMPT)
        with_ghost = tmux.wait_for(
            lambda s: (line := find_line(s, PROMPT)) is not None and GHOST_SGR in line,
            60,
            "ghost text after the typed text",
            escapes=True,
        )
        line = find_line(with_ghost, PROMPT)
        before, _, ghost_part = line.partition(GHOST_SGR)
        assert plain(before).rstrip() == PROMPT.rstrip(), "the ghost text starts at the cursor"
        ghost_shown = plain(ghost_part).rstrip()
        assert ghost_shown, "ghost text is drawn"
        shown = plain(line).rstrip()
        assert "-- INSERT --" in "\n".join(plain(x) for x in with_ghost)

        tmux("send-keys", "-t", "dc", "Tab")
        accepted = tmux.wait_for(
            lambda s: (x := find_line(s, PROMPT)) is not None and GHOST_SGR not in x,
            10,
            "the accepted text",
            escapes=True,
        )
        assert plain(find_line(accepted, PROMPT)).rstrip() == shown, (
            "Tab keeps exactly what the ghost text showed"
        )

        tmux("send-keys", "-t", "dc", "Escape")
        tmux("send-keys", "-t", "dc", ":w", "Enter")
        deadline = time.monotonic() + 10
        while "result" not in source.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        written = source.read_text().split("\n")
        new_line = next(x for x in written if x.startswith(PROMPT))
        assert len(new_line) > len(PROMPT), "the accepted completion is in the file"
        screen = "\n".join(tmux.screen())
        ghost_screen = "\n".join(plain(x) for x in with_ghost)
        (tmp_path / "screen.txt").write_text(
            f"--- ghost text shown ---\n{ghost_screen}\n--- after Tab, Esc, :w ---\n{screen}\n"
        )
        print(f"--- ghost text shown ---\n{ghost_screen}\n--- after Tab, Esc, :w ---\n{screen}")
    finally:
        subprocess.run(
            ["tmux", "-S", str(tmp_path / "tmux.sock"), "kill-server"], env=env, capture_output=True
        )
