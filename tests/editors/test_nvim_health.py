"""``:checkhealth diffucoder`` in a real headless Neovim 0.11 (issue: installable editor clients): it reports the
setup, the server command and the settings, and its list of settings is the server's own."""

from __future__ import annotations

import re
import subprocess
import sys

from editor_support import NVIM_PLUGIN, isolated_env, nvim_binary

from diffucoder_lsp.server.settings import Settings

SCRIPT = r"""
local ok, err = pcall(function()
  vim.opt.rtp:append(os.getenv("DC_PLUGIN"))
  require("diffucoder").setup({ python = os.getenv("DC_PYTHON"), settings = { maxTokens = 8, colour = 1 } })
  vim.cmd("checkhealth diffucoder")
end)
local lines = ok and vim.api.nvim_buf_get_lines(0, 0, -1, false) or { "LUA ERROR " .. tostring(err) }
local f = io.open(os.getenv("DC_OUT"), "w")
f:write(table.concat(lines, "\n"))
f:close()
vim.cmd("qa!")
"""


def test_checkhealth_reports_setup_server_and_settings(tmp_path):
    script = tmp_path / "health.lua"
    script.write_text(SCRIPT)
    out = tmp_path / "health.txt"
    env = isolated_env(
        tmp_path / "home", DC_PLUGIN=str(NVIM_PLUGIN), DC_OUT=str(out), DC_PYTHON=sys.executable
    )
    subprocess.run(
        [nvim_binary(), "--headless", "--clean", "-c", f"luafile {script}"],
        env=env,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    text = out.read_text()
    assert "LUA ERROR" not in text, text
    assert "setup() called" in text
    assert f"server command: {sys.executable} -m diffucoder_lsp.server" in text
    assert "unknown settings (ignored by the server): colour" in text
    assert "maxTokens" not in text.split("unknown settings")[1].split("\n")[0]


def test_the_health_check_knows_exactly_the_server_settings():
    lua = (NVIM_PLUGIN / "lua" / "diffucoder" / "health.lua").read_text()
    block = re.search(r"local KNOWN = \{(.*?)\n\}", lua, re.S).group(1)
    assert set(re.findall(r'"(\w+)"', block)) == set(Settings().to_json())
