-- End-to-end scenario of the plugin in a real (headless) Neovim against the real server.
-- Keys are fed through Neovim's typeahead (insert mode, mappings and autocommands run as for a user); each step
-- waits on the event loop from a coroutine. Environment: DC_PLUGIN (plugin dir), DC_SERVER_CMD (JSON list),
-- DC_SETTINGS (JSON object), DC_FILE (a Python file), DC_HOLES (a file with <|mask|> holes), DC_OUT (report).
-- Exit: `qa!` when the scenario ran (the report says what happened), `cquit 1` when it failed.
vim.opt.rtp:prepend(os.getenv("DC_PLUGIN"))
local report = { steps = {} }
local out = os.getenv("DC_OUT")

local function finish(ok, err)
  report.ok, report.error = ok, err
  vim.fn.writefile({ vim.json.encode(report) }, out)
  vim.cmd(ok and "qa!" or "cquit 1")
end

local co
local function wait(ms, cond, what)
  local deadline = vim.uv.now() + ms
  while true do
    if cond == nil or cond() then
      if cond == nil then -- plain sleep
        if vim.uv.now() >= deadline then return end
      else
        return
      end
    end
    if cond ~= nil and vim.uv.now() >= deadline then error("timed out waiting for " .. (what or "a condition")) end
    vim.defer_fn(function() coroutine.resume(co) end, 10)
    coroutine.yield()
  end
end

local function keys(s) vim.api.nvim_feedkeys(vim.keycode(s), "mt", false) end
local function step(name, data) table.insert(report.steps, { name = name, data = data }) end
local function lines(buf) return vim.api.nvim_buf_get_lines(buf, 0, -1, true) end

co = coroutine.create(function()
  local ok, err = pcall(function()
    local dc = require("diffucoder")
    local ghost = require("diffucoder.ghost")
    dc.setup({
      cmd = vim.json.decode(os.getenv("DC_SERVER_CMD")),
      settings = vim.json.decode(os.getenv("DC_SETTINGS")),
      ghost = { debounce_ms = 30, native = false },
    })
    vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("DC_FILE")))
    local buf = vim.api.nvim_get_current_buf()
    vim.bo[buf].indentexpr, vim.bo[buf].autoindent, vim.bo[buf].smartindent = "", false, false -- exact lines
    wait(30000, function() local c = dc.client(buf); return c and c.initialized end, "the client")
    wait(120000, function() return dc.status() and dc.status().state == "ready" end, "the model")
    report.statusline_ready = dc.statusline()
    step("ready")

    -- 1. Typing in insert mode brings ghost text (debounced automatic request), shown as an extmark.
    keys("Go    result = ")
    wait(60000, function() return ghost.visible(buf) end, "ghost text after typing")
    local cur = ghost.current(buf)
    local marks = vim.api.nvim_buf_get_extmarks(buf, ghost.ns, 0, -1, { details = true })
    report.ghost = { current = cur, mode = vim.api.nvim_get_mode().mode, marks = marks, line = vim.api.nvim_get_current_line() }
    report.requests_after_typing = ghost._state(buf).requests
    step("ghost")

    -- 2. <Tab> accepts it: the buffer gets exactly the ghost text at the cursor.
    local before = lines(buf)
    keys("<Tab>")
    wait(5000, function() return not ghost.visible(buf) end, "the ghost text to go")
    report.accept = { before = before, after = lines(buf), cursor = vim.api.nvim_win_get_cursor(0), extmarks = #vim.api.nvim_buf_get_extmarks(buf, ghost.ns, 0, -1, {}) }
    step("accept")

    -- 3. Accept word: a new line, new ghost text, <M-w> takes its first word and leaves the rest shown.
    keys("<CR>x = ")
    wait(60000, function() return ghost.visible(buf) end, "ghost text on the next line")
    local g2 = ghost.current(buf)
    local line_before = vim.api.nvim_get_current_line()
    keys("<M-w>")
    wait(5000, function() return vim.api.nvim_get_current_line() ~= line_before end, "accept word")
    report.accept_word = { ghost = g2, line_before = line_before, line_after = vim.api.nvim_get_current_line(), rest = ghost.current(buf), piece = ghost.piece(g2.text, "word") }
    step("accept_word")

    -- 4. <C-]> dismisses; <Esc> leaves insert mode with nothing shown.
    keys("<C-]>")
    wait(2000, function() return not ghost.visible(buf) end, "dismiss")
    report.dismissed = #vim.api.nvim_buf_get_extmarks(buf, ghost.ns, 0, -1, {}) == 0
    keys("<Esc>")
    wait(2000, function() return vim.api.nvim_get_mode().mode == "n" end, "normal mode")
    step("dismiss")

    -- 5. Moving on before the answer: with the server waiting 1.5 s before it runs an automatic request, type,
    -- and once the request is out move the cursor: the request is cancelled and no ghost text may appear.
    dc.update_settings({ debounceMs = 1500 })
    local st = ghost._state(buf)
    local requests0 = st.requests or 0
    keys("oy = 1")
    wait(5000, function() return st.pending ~= nil end, "the automatic request")
    local pending_at = vim.api.nvim_win_get_cursor(0)
    keys("<Left>")
    wait(2000, function() return vim.api.nvim_win_get_cursor(0)[2] == pending_at[2] - 1 end, "the cursor to move")
    wait(200)
    local pending_soon = st.pending ~= nil -- the server holds the request for 1.5 s: still out unless cancelled
    wait(3000)
    report.moved_on = {
      visible = ghost.visible(buf),
      requests = (st.requests or 0) - requests0,
      pending_after = pending_soon,
      pending_at = pending_at,
      cursor = vim.api.nvim_win_get_cursor(0),
      line = vim.api.nvim_get_current_line(),
    }
    keys("<Esc>")
    wait(1000, function() return vim.api.nvim_get_mode().mode == "n" end, "normal mode")
    dc.update_settings({ debounceMs = 50 })
    step("moved_on")

    -- 6. :DiffucoderStatus and the statusline after completions.
    report.status_cmd = vim.api.nvim_exec2("DiffucoderStatus", { output = true }).output
    report.statusline = dc.statusline()
    report.status = dc.status()
    step("status")

    -- 7. :DiffucoderFill fills every <|mask|> hole of another buffer.
    vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("DC_HOLES")))
    local hb = vim.api.nvim_get_current_buf()
    wait(10000, function() return dc.client(hb) ~= nil end, "attach to the holes file")
    local holes_before = lines(hb)
    local fill_result
    dc.fill(hb, function(e, r) fill_result = { err = e, result = r } end)
    wait(120000, function() return fill_result ~= nil end, "fill")
    report.fill = { before = holes_before, after = lines(hb), result = fill_result.result, err = fill_result.err }
    step("fill")

    -- 8. :'<,'>DiffucoderRegenerate on a visual line selection.
    local regen_before = lines(hb)
    local got
    vim.api.nvim_create_autocmd("TextChanged", { buffer = hb, once = true, callback = function() got = true end })
    keys("ggVj:DiffucoderRegenerate<CR>")
    wait(120000, function() return table.concat(lines(hb), "\n") ~= table.concat(regen_before, "\n") end, "regenerate")
    report.regenerate = { before = regen_before, after = lines(hb) }
    step("regenerate")

    -- 9. A charwise visual selection: only the selected characters are regenerated ("é" checks byte/UTF-16 columns).
    vim.api.nvim_buf_set_lines(hb, -1, -1, true, { "é = alpha + beta" })
    local last = vim.api.nvim_buf_line_count(hb)
    local line_before = vim.api.nvim_buf_get_lines(hb, last - 1, last, true)[1]
    keys("<Esc>G0fav4l:DiffucoderRegenerate<CR>")
    wait(120000, function() return vim.api.nvim_buf_get_lines(hb, last - 1, last, true)[1] ~= line_before end, "charwise regenerate")
    report.regenerate_charwise = { before = line_before, after = vim.api.nvim_buf_get_lines(hb, last - 1, -1, true) }
    step("regenerate_charwise")

    -- 10. :help diffucoder (tags generated by the test in its copy of the plugin).
    vim.cmd("help diffucoder")
    report.help = { buftype = vim.bo.buftype, name = vim.api.nvim_buf_get_name(0), line = vim.api.nvim_get_current_line() }
    vim.cmd("help diffucoder-commands")
    report.help_commands = vim.api.nvim_get_current_line()
    step("help")
  end)
  finish(ok, ok and nil or tostring(err))
end)

vim.schedule(function() coroutine.resume(co) end)
