"""The Neovim plugin's setup in a real headless Neovim 0.11 (issue: newcomer stumbles, items 4 and 5).

``setup({})`` exactly as the README says must send the server JSON objects (an empty Lua table encodes as
``[]``, which the server used to warn about with three Press-ENTER prompts), and ghost text must stand apart from
code without 'termguicolors' (a cterm colour of its own: Comment has none in the default colour scheme).
"""

from __future__ import annotations

import json
import subprocess

from editor_support import NVIM_PLUGIN, isolated_env, nvim_binary

SCRIPT = r"""
local function write(t)
  local f = io.open(os.getenv("DC_OUT"), "w")
  f:write(vim.json.encode(t))
  f:close()
end
local ok, err = pcall(function()
vim.opt.rtp:append(os.getenv("DC_PLUGIN"))
local dc = require("diffucoder")
dc.setup({})
local cfg = vim.lsp.config.diffucoder
local hl = vim.api.nvim_get_hl(0, { name = "DiffucoderGhost", link = false })
local comment = vim.api.nvim_get_hl(0, { name = "Comment", link = false })
local out = {
  init_options = vim.json.encode(cfg.init_options),
  settings = vim.json.encode(cfg.settings),
  with_values = vim.json.encode(dc.as_object({ maxTokens = 8 })),
  ghost_ctermfg = hl.ctermfg,
  comment_ctermfg = comment.ctermfg,
  ghost_fg = hl.fg,
}
write(out)
end)
if not ok then write({ error = tostring(err) }) end
vim.cmd("qa!")
"""


def test_setup_with_an_empty_table_sends_objects_and_ghost_text_has_a_cterm_colour(tmp_path):
    script = tmp_path / "setup.lua"
    script.write_text(SCRIPT)
    out = tmp_path / "out.json"
    env = isolated_env(tmp_path / "home", DC_PLUGIN=str(NVIM_PLUGIN), DC_OUT=str(out))
    proc = subprocess.run(
        [nvim_binary(), "--headless", "--clean", "-c", f"luafile {script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.exists(), proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert "error" not in got, got.get("error")
    assert got["init_options"] == "{}"
    assert json.loads(got["settings"]) == {"diffucoder": {}}
    assert json.loads(got["with_values"]) == {"maxTokens": 8}
    assert isinstance(got["ghost_ctermfg"], int)
    assert isinstance(got["ghost_fg"], int)
