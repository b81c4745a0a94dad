-- init for the tmux screen test: the plugin from DC_PLUGIN, the server from DC_SERVER_CMD with DC_SETTINGS,
-- and a statusline that shows the plugin's status.
vim.opt.rtp:prepend(os.getenv("DC_PLUGIN"))
vim.o.laststatus = 2
vim.o.swapfile = false
vim.o.statusline = "%f %= %{v:lua.require'diffucoder'.statusline()} "
require("diffucoder").setup({
  cmd = vim.json.decode(os.getenv("DC_SERVER_CMD")),
  settings = vim.json.decode(os.getenv("DC_SETTINGS")),
  ghost = { debounce_ms = 30, native = false },
})
-- A colour nothing else uses, so the screen test can tell ghost text from buffer text.
vim.api.nvim_set_hl(0, "DiffucoderGhost", { ctermfg = 201, fg = "#ff00ff" })
