-- Ghost text for Neovim 0.11: asks the server for textDocument/inlineCompletion while typing (debounced, the
-- previous request cancelled when the text or the cursor moves on), shows the first item as virtual text at the
-- cursor (inline for the first line, virtual lines for the rest), and accepts it whole, by word or by line.
-- On Neovim 0.12+ (vim.lsp.inline_completion) the native UI is used instead unless `native = false`.
local M = {}

local ns = vim.api.nvim_create_namespace("diffucoder.ghost")
M.ns = ns

local cfg = { enabled = true, auto = true, debounce_ms = 75, native = "auto", hl_group = "DiffucoderGhost", keymaps = {} }
local buffers = {} -- bufnr -> state

local function has_native() return vim.lsp.inline_completion ~= nil and type(vim.lsp.inline_completion.enable) == "function" end

function M.native()
  if cfg.native == false then return false end
  return has_native()
end

function M.setup(opts)
  cfg = vim.tbl_deep_extend("force", cfg, opts or {})
  -- Comment's colours, plus a cterm colour of its own: without 'termguicolors' the default colour scheme's Comment
  -- has none, and ghost text looked like real code. 8 is the terminal's grey ("bright black") in 16 colours too.
  local function hl()
    local ok, comment = pcall(vim.api.nvim_get_hl, 0, { name = "Comment", link = false })
    comment = ok and comment or {}
    vim.api.nvim_set_hl(0, "DiffucoderGhost", {
      fg = comment.fg or 0x808080,
      ctermfg = comment.ctermfg or 8,
      italic = true,
      cterm = { italic = true },
      default = true,
    })
  end
  hl()
  vim.api.nvim_create_autocmd("ColorScheme", {
    group = vim.api.nvim_create_augroup("diffucoder.ghost.hl", { clear = true }),
    callback = hl,
  })
end

local function in_insert() return vim.api.nvim_get_mode().mode:sub(1, 1) == "i" end

local function cursor_of(bufnr)
  local win = vim.api.nvim_get_current_win()
  if vim.api.nvim_win_get_buf(win) ~= bufnr then return nil end
  local c = vim.api.nvim_win_get_cursor(win)
  return c[1] - 1, c[2]
end

local function tick(bufnr) return vim.api.nvim_buf_get_changedtick(bufnr) end

-- LSP position -> byte column on that line.
local function byte_col(bufnr, pos, encoding)
  local line = vim.api.nvim_buf_get_lines(bufnr, pos.line, pos.line + 1, false)[1] or ""
  if encoding == "utf-8" then return math.min(pos.character, #line) end
  local ok, col = pcall(vim.str_byteindex, line, encoding, pos.character, false)
  return ok and col or #line
end

local function clear(bufnr)
  local st = buffers[bufnr]
  if st then st.item = nil end
  if vim.api.nvim_buf_is_valid(bufnr) then vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1) end
end

local function cancel(st)
  if st.timer then st.timer:stop() end
  st.seq = st.seq + 1
  if st.pending then
    local client = vim.lsp.get_client_by_id(st.pending.client_id)
    if client then pcall(client.cancel_request, client, st.pending.id) end
    st.pending = nil
  end
end

-- What the screen shows for a piece of ghost text: tabs expanded, control characters as ^X.
function M.display(text, tabstop)
  tabstop = tabstop or 8
  text = text:gsub("\t", string.rep(" ", tabstop))
  return (text:gsub("[%z\1-\8\11-\31\127]", function(c)
    local b = c:byte()
    return "^" .. (b == 127 and "?" or string.char(b + 64))
  end))
end

local function render(bufnr)
  local st = buffers[bufnr]
  vim.api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  local it = st and st.item
  if not it then return end
  local lines = vim.split(it.text, "\n", { plain = true })
  local opts = { hl_mode = "combine", priority = 300 }
  if lines[1] ~= "" then
    opts.virt_text = { { M.display(lines[1], vim.bo[bufnr].tabstop), cfg.hl_group } }
    opts.virt_text_pos = "inline"
  end
  if #lines > 1 then
    opts.virt_lines = {}
    for i = 2, #lines do
      table.insert(opts.virt_lines, { { lines[i] == "" and " " or M.display(lines[i], vim.bo[bufnr].tabstop), cfg.hl_group } })
    end
  end
  it.extmark = vim.api.nvim_buf_set_extmark(bufnr, ns, it.row, it.col, opts)
  st.rendered_tick = tick(bufnr)
end

local function item_text(item)
  local text = item.insertText
  if type(text) == "table" then -- StringValue (snippet): show and insert the plain text
    text = tostring(text.value or ""):gsub("%${%d+:([^}]*)}", "%1"):gsub("%$%d+", "")
  end
  return type(text) == "string" and text or ""
end

-- Turn a server item into what is shown: the text from the cursor on, and how far it replaces.
local function show(bufnr, item, row, col, encoding)
  local st = buffers[bufnr]
  local text = item_text(item)
  local end_col = col
  if item.range then
    local s, e = item.range.start, item.range["end"]
    if s.line ~= row then return end
    local scol = byte_col(bufnr, s, encoding)
    if scol > col then return end
    if scol < col then -- the item repeats what was typed since its start: drop that part
      local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
      local typed = line:sub(scol + 1, col)
      if text:sub(1, #typed) ~= typed then return end
      text = text:sub(#typed + 1)
    end
    if e.line == row then end_col = math.max(col, byte_col(bufnr, e, encoding)) end
  end
  if text == "" then return end
  st.item = { row = row, col = col, text = text, end_col = end_col }
  render(bufnr)
  pcall(vim.api.nvim_exec_autocmds, "User", { pattern = "DiffucoderGhost", modeline = false, data = { bufnr = bufnr, text = text } })
end

--- Ask for ghost text at the cursor now. `manual`: an explicit request (trigger key / command), shown in any mode.
function M.request(bufnr, manual)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local st = buffers[bufnr]
  if not st then return false end
  cancel(st)
  local client = vim.lsp.get_client_by_id(st.client_id)
  local row, col = cursor_of(bufnr)
  if not client or not row then return false end
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = manual and 1 or 2 }
  local seq, at_tick = st.seq, tick(bufnr)
  local ok, id = client:request("textDocument/inlineCompletion", params, function(err, result)
    if st.seq ~= seq then return end -- superseded or cancelled
    st.pending = nil
    st.last_response = { err = err, result = result }
    if err or type(result) ~= "table" then return end
    if tick(bufnr) ~= at_tick then return end
    local r, c = cursor_of(bufnr)
    if r ~= row or c ~= col then return end
    if not manual and not in_insert() then return end
    local items = result.items or result
    if items[1] then show(bufnr, items[1], row, col, client.offset_encoding) end
  end, bufnr)
  if ok and id then st.pending = { client_id = client.id, id = id, row = row, col = col, tick = at_tick } end
  st.requests = (st.requests or 0) + 1
  return ok
end

function M.trigger(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  if M.native() then
    vim.notify("DiffuCoder: ghost text uses vim.lsp.inline_completion here", vim.log.levels.INFO)
    return false
  end
  if not buffers[bufnr] then
    vim.notify("DiffuCoder: the server is not attached to this buffer", vim.log.levels.WARN)
    return false
  end
  return M.request(bufnr, true)
end

local function schedule(bufnr)
  local st = buffers[bufnr]
  if not st or not cfg.auto then return end
  cancel(st)
  st.timer = st.timer or vim.uv.new_timer()
  local seq = st.seq
  st.timer:start(cfg.debounce_ms, 0, vim.schedule_wrap(function()
    if st.seq == seq and buffers[bufnr] and in_insert() and vim.api.nvim_get_current_buf() == bufnr then
      M.request(bufnr, false)
    end
  end))
end

--- The ghost text shown in a buffer: { row, col, text } (0-based row, byte col) or nil.
function M.current(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local st = buffers[bufnr]
  local it = st and st.item
  if not it then return nil end
  return { row = it.row, col = it.col, text = it.text }
end

function M.visible(bufnr) return M.current(bufnr) ~= nil end

--- The next piece of `text` for accept word / accept line.
function M.piece(text, kind)
  if kind == "word" then
    return text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text
  elseif kind == "line" then
    local first = text:match("^[^\n]*")
    if first ~= "" then return first end
    return text:match("^\n[^\n]*") or text
  end
  return text
end

--- Insert the ghost text (kind: "all", "word" or "line"); the rest stays shown. False when nothing is shown.
function M.accept(bufnr, kind)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local st = buffers[bufnr]
  local it = st and st.item
  if not it then return false end
  cancel(st)
  local part = M.piece(it.text, kind or "all")
  local whole = part == it.text
  local lines = vim.split(part, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, it.row, it.col, it.row, whole and it.end_col or it.col, lines)
  local row = it.row + #lines - 1
  local col = #lines == 1 and it.col + #lines[1] or #lines[#lines]
  clear(bufnr)
  if vim.api.nvim_win_get_buf(0) == bufnr then vim.api.nvim_win_set_cursor(0, { row + 1, col }) end
  if not whole then
    st.item = { row = row, col = col, text = it.text:sub(#part + 1), end_col = col }
    render(bufnr)
  end
  st.skip_tick = tick(bufnr)
  return true
end

function M.dismiss(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local st = buffers[bufnr]
  if not st then return false end
  local had = st.item ~= nil
  cancel(st)
  clear(bufnr)
  return had
end

local function on_text_changed(bufnr)
  local st = buffers[bufnr]
  if not st then return end
  if st.skip_tick == tick(bufnr) then return end -- our own accept
  local it = st.item
  local row, col = cursor_of(bufnr)
  if it and row == it.row and col and col > it.col then -- typed the start of the ghost text: keep the rest
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
    local typed = line:sub(it.col + 1, col)
    if #typed < #it.text and it.text:sub(1, #typed) == typed then
      it.text, it.col, it.end_col = it.text:sub(#typed + 1), col, it.end_col + #typed
      render(bufnr)
      return
    end
  end
  clear(bufnr)
  schedule(bufnr)
end

local function on_cursor_moved(bufnr)
  local st = buffers[bufnr]
  if not st then return end
  local t = tick(bufnr)
  local row, col = cursor_of(bufnr)
  local it = st.item
  if it then
    if t ~= st.rendered_tick then return end -- the text changed: TextChangedI decides
    if row ~= it.row or col ~= it.col then
      cancel(st)
      clear(bufnr)
    end
  elseif st.pending and st.pending.tick == t and (row ~= st.pending.row or col ~= st.pending.col) then
    cancel(st) -- moved away before the answer came
  end
end

-- The key's own meaning, next in the typeahead (before anything typed after it).
local function feed(key) vim.api.nvim_feedkeys(vim.keycode(key), "ni", false) end

local function map(bufnr, lhs, fn, desc)
  if not lhs or lhs == "" then return end
  vim.keymap.set("i", lhs, function()
    if not fn() then feed(lhs) end
  end, { buffer = bufnr, desc = "DiffuCoder: " .. desc, silent = true })
end

--- Called from the client's on_attach.
function M.attach(client, bufnr)
  if not cfg.enabled then return end
  local keys = cfg.keymaps or {}
  if M.native() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    map(bufnr, keys.accept, function() return vim.lsp.inline_completion.get() end, "accept the inline completion")
    return
  end
  if buffers[bufnr] then -- re-attached (restart): keep the state, use the new client
    buffers[bufnr].client_id = client.id
    return
  end
  local st = { client_id = client.id, seq = 0 }
  buffers[bufnr] = st
  local group = vim.api.nvim_create_augroup("diffucoder.ghost." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd("TextChangedI", { group = group, buffer = bufnr, callback = function() on_text_changed(bufnr) end })
  vim.api.nvim_create_autocmd("CursorMovedI", { group = group, buffer = bufnr, callback = function() on_cursor_moved(bufnr) end })
  vim.api.nvim_create_autocmd("InsertEnter", { group = group, buffer = bufnr, callback = function() schedule(bufnr) end })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, { group = group, buffer = bufnr, callback = function() M.dismiss(bufnr) end })
  vim.api.nvim_create_autocmd("LspDetach", {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data and args.data.client_id == st.client_id then
        M.dismiss(bufnr)
        if st.timer then st.timer:close() end
        buffers[bufnr] = nil
        pcall(vim.api.nvim_del_augroup_by_id, group)
      end
    end,
  })
  vim.api.nvim_create_autocmd("BufWipeout", {
    group = group,
    buffer = bufnr,
    callback = function()
      if st.timer then st.timer:stop(); st.timer:close() end
      buffers[bufnr] = nil
    end,
  })
  map(bufnr, keys.accept, function() return M.accept(bufnr, "all") end, "accept the ghost text")
  map(bufnr, keys.accept_word, function() return M.accept(bufnr, "word") end, "accept a word of the ghost text")
  map(bufnr, keys.accept_line, function() return M.accept(bufnr, "line") end, "accept a line of the ghost text")
  map(bufnr, keys.dismiss, function() return M.dismiss(bufnr) end, "dismiss the ghost text")
  map(bufnr, keys.trigger, function() M.request(bufnr, true); return true end, "ask for ghost text")
end

--- Internal state of a buffer, for tests and :checkhealth-like inspection.
function M._state(bufnr) return buffers[(bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr] end

return M
