"""The Neovim plugin (editors/nvim) in a real headless Neovim 0.11 against the real server on a tiny checkpoint.

One scenario (editors/nvim/tests/plugin_e2e.lua) types through Neovim's typeahead, so insert mode, the plugin's
mappings and autocommands run as for a user: ghost text appears as an extmark after typing, <Tab> inserts it,
<M-w> takes one word and leaves the rest, <C-]> dismisses, moving the cursor before the answer shows nothing,
:DiffucoderStatus / statusline report the model, :DiffucoderFill fills the holes, :DiffucoderRegenerate rewrites
a visual selection, and :help diffucoder opens the documentation.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from editor_support import NVIM_PLUGIN, SERVER_CMD, isolated_env, nvim_binary, plugin_copy

pytestmark = pytest.mark.e2e

SOURCE = "import os\n\n\ndef greet(name):\n    greeting = 'hello ' + name\n"
HOLES = "def add(a, b):\n    return <|mask|>\n\n\ndef mul(a, b):\n    <|mask|>\n"


def shown(text: str) -> str:
    """The plugin's display form of ghost text (tabs expanded to 'tabstop' 8, control characters as ^X)."""
    text = text.replace("\t", " " * 8)
    return re.sub(
        r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: "^" + ("?" if m[0] == "\x7f" else chr(ord(m[0]) + 64)), text
    )


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, tiny_ckpt):
    nvim = nvim_binary()
    tmp = tmp_path_factory.mktemp("nvim_plugin")
    plugin = plugin_copy(tmp / "plugin")
    subprocess.run(
        [nvim, "--headless", "--clean", "-c", f"helptags {plugin / 'doc'}", "-c", "qa!"],
        check=True,
        timeout=60,
    )
    project = tmp / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (project / "greet.py").write_text(SOURCE)
    (project / "holes.py").write_text(HOLES)
    out = tmp / "report.json"
    env = isolated_env(
        tmp / "home",
        DC_PLUGIN=str(plugin),
        DC_SERVER_CMD=json.dumps(SERVER_CMD),
        DC_SETTINGS=json.dumps({"model": str(tiny_ckpt), "device": "cpu"}),
        DC_FILE=str(project / "greet.py"),
        DC_HOLES=str(project / "holes.py"),
        DC_OUT=str(out),
    )
    proc = subprocess.run(
        [nvim, "--headless", "--clean", "-c", f"luafile {NVIM_PLUGIN / 'tests' / 'plugin_e2e.lua'}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        stdin=subprocess.DEVNULL,
    )
    assert out.exists(), f"no report (rc {proc.returncode}): {proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    assert report["ok"], (
        f"{report.get('error')} after {[s['name'] for s in report['steps']]}: {proc.stderr[-2000:]}"
    )
    assert proc.returncode == 0
    return report


def test_ghost_text_appears_as_an_extmark_while_typing(scenario):
    g = scenario["ghost"]
    assert g["mode"].startswith("i"), "the ghost text must come while still in insert mode"
    assert g["line"] == "    result = "
    cur = g["current"]
    assert cur["row"] == 5 and cur["col"] == len("    result = ")
    assert cur["text"].strip()
    (mark,) = g["marks"]
    _, row, col, details = mark
    assert (row, col) == (5, len("    result = "))
    first, *rest = cur["text"].split("\n")
    if first:
        assert details["virt_text"] == [[shown(first), "DiffucoderGhost"]]
        assert details["virt_text_pos"] == "inline"
    assert [line[0][0] for line in details.get("virt_lines") or []] == [shown(x) or " " for x in rest]
    assert scenario["requests_after_typing"] >= 1


def test_tab_inserts_exactly_the_ghost_text(scenario):
    a = scenario["accept"]
    text = scenario["ghost"]["current"]["text"]
    before = "\n".join(a["before"])
    after = "\n".join(a["after"])
    # The ghost text went in at the cursor (end of the typed line) and nothing else changed.
    assert after == before + text or after == before[: len(before)] + text, (before, after, text)
    assert a["extmarks"] == 0
    last = text.split("\n")
    row = 5 + len(last) - 1
    col = (len("    result = ") if len(last) == 1 else 0) + len(last[-1].encode())
    assert a["cursor"] == [row + 1, col]


def test_accept_word_takes_one_word_and_keeps_the_rest(scenario):
    w = scenario["accept_word"]
    piece, full = w["piece"], w["ghost"]["text"]
    assert piece and full.startswith(piece)
    if "\n" not in piece:
        assert w["line_after"] == w["line_before"] + piece
    if piece != full:
        assert w["rest"] and w["rest"]["text"] == full[len(piece) :]
    else:
        assert w["rest"] is None


def test_dismiss_and_moving_on_show_nothing(scenario):
    assert scenario["dismissed"]
    m = scenario["moved_on"]
    assert m["line"] == "y = 1" and m["requests"] == 1
    assert m["pending_at"][1] == 5 and m["cursor"][1] == 4
    assert not m["pending_after"], "moving the cursor must cancel the request in flight"
    assert not m["visible"], "a completion for a position the cursor left must not be shown"


def test_status_command_and_statusline(scenario, tiny_ckpt):
    assert scenario["statusline_ready"].startswith("DiffuCoder ready")
    assert scenario["status"]["state"] == "ready" and scenario["status"]["model"] == str(tiny_ckpt)
    assert scenario["status"]["lastLatencyMs"] > 0
    assert "DiffuCoder: ready" in scenario["status_cmd"] and str(tiny_ckpt) in scenario["status_cmd"]
    assert scenario["status_cmd"].count("last completion") == 1
    assert scenario["statusline"].startswith("DiffuCoder ready ") and scenario["statusline"].endswith("ms")


def test_fill_replaces_every_hole(scenario):
    f = scenario["fill"]
    assert f.get("err") is None
    assert f["result"] == {"applied": True, "holes": 2}
    after = "\n".join(f["after"])
    assert "<|mask|>" not in after
    assert f["after"][0] == "def add(a, b):" and f["after"][1].startswith("    return ")
    assert "def mul(a, b):" in f["after"]


def test_regenerate_rewrites_the_visual_selection(scenario):
    r = scenario["regenerate"]
    assert r["after"] != r["before"]
    # Lines below the two selected ones are untouched.
    tail = r["before"][2:]
    assert r["after"][len(r["after"]) - len(tail) :] == tail


def test_regenerate_a_charwise_selection_keeps_the_rest_of_the_line(scenario):
    r = scenario["regenerate_charwise"]
    assert r["before"] == "é = alpha + beta"
    (after,) = r["after"]  # a piece of one line stays on that line
    assert after != r["before"]
    assert after.startswith("é = ") and after.endswith(" + beta"), after


def test_help_opens(scenario):
    h = scenario["help"]
    assert h["buftype"] == "help" and h["name"].endswith("diffucoder.txt")
    assert "*diffucoder*" in h["line"]
    assert "*diffucoder-commands*" in scenario["help_commands"]


def test_native_inline_completion_is_used_when_neovim_has_it(tmp_path):
    """Neovim 0.12+ path, with a stand-in vim.lsp.inline_completion (only 0.11 is installable here)."""
    nvim = nvim_binary()
    plugin = plugin_copy(tmp_path / "plugin")
    out = tmp_path / "report.json"
    env = isolated_env(tmp_path / "home", DC_PLUGIN=str(plugin), DC_OUT=str(out))
    proc = subprocess.run(
        [nvim, "--headless", "--clean", "-c", f"luafile {NVIM_PLUGIN / 'tests' / 'native_stub.lua'}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.exists(), proc.stderr
    r = json.loads(out.read_text())
    assert r["native_auto"] is True and r["native_off"] is False
    assert len(r["enable"]) == 1 and r["enable"][0]["on"] is True and r["enable"][0]["bufnr"] >= 1
    assert r["state"] is False and r["mapped"]
    assert r["after_fallback"] == {"get": 1, "line": "\t"}  # nothing to accept: Tab is a Tab
    assert r["after_accept"] == {"get": 2, "line": "\t"}  # accepted by get(): no extra Tab typed
