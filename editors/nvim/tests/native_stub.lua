-- The Neovim 0.12+ path on 0.11: a stand-in vim.lsp.inline_completion records what the plugin asks of it.
-- Environment: DC_PLUGIN, DC_OUT. Exit: qa! with the report written.
vim.opt.rtp:prepend(os.getenv("DC_PLUGIN"))
local calls = { enable = {}, get = 0 }
local get_result = false
vim.lsp.inline_completion = {
  enable = function(on, filter) table.insert(calls.enable, { on = on, bufnr = filter and filter.bufnr }) end,
  get = function() calls.get = calls.get + 1; return get_result end,
}
local ghost = require("diffucoder.ghost")
ghost.setup({ native = "auto", keymaps = { accept = "<Tab>" } })
local report = { native_auto = ghost.native() }
local buf = vim.api.nvim_create_buf(true, false)
vim.api.nvim_set_current_buf(buf)
ghost.attach({ id = 1, offset_encoding = "utf-16" }, buf)
report.enable = calls.enable
report.state = ghost._state(buf) ~= nil -- the plugin's own ghost text is not set up
local map = vim.fn.maparg("<Tab>", "i", false, true)
report.mapped = map.buffer == 1 and map.callback ~= nil
-- No suggestion shown: <Tab> asks get() and then inserts a real tab.
vim.api.nvim_feedkeys(vim.keycode("i<Tab><Esc>"), "mtx", false)
report.after_fallback = { get = calls.get, line = vim.api.nvim_buf_get_lines(buf, 0, 1, true)[1] }
-- A suggestion shown (get() accepts it): nothing else is typed.
get_result = true
vim.api.nvim_feedkeys(vim.keycode("A<Tab><Esc>"), "mtx", false)
report.after_accept = { get = calls.get, line = vim.api.nvim_buf_get_lines(buf, 0, 1, true)[1] }
ghost.setup({ native = false })
report.native_off = ghost.native()
vim.fn.writefile({ vim.json.encode(report) }, os.getenv("DC_OUT"))
vim.cmd("qa!")
