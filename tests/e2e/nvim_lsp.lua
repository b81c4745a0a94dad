-- Drive the DiffuCoder language server from a real Neovim (0.11, headless).
-- Inputs (environment): DC_SERVER_CMD (JSON list), DC_INIT_OPTIONS (JSON object), DC_FILE (a Python file),
-- DC_OUT (where to write the JSON report). Exit: `qa!` on success, `cquit 1` on failure (report says why).

local out = os.getenv("DC_OUT")
local report = { statuses = {}, steps = {} }

local function finish(ok, err)
  report.ok = ok
  report.error = err
  vim.fn.writefile({ vim.json.encode(report) }, out)
  if ok then vim.cmd("qa!") else vim.cmd("cquit 1") end
end

local function step(name) table.insert(report.steps, name) end

local ok, err = pcall(function()
  local ready = false
  vim.lsp.config("diffucoder", {
    cmd = vim.json.decode(os.getenv("DC_SERVER_CMD")),
    filetypes = { "python" },
    root_markers = { "pyproject.toml", ".git" },
    init_options = vim.json.decode(os.getenv("DC_INIT_OPTIONS")),
    handlers = {
      ["diffucoder/status"] = function(_, result)
        table.insert(report.statuses, result)
        if result.state == "ready" then ready = true end
      end,
    },
  })
  vim.lsp.enable("diffucoder")
  vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("DC_FILE")))
  local buf = vim.api.nvim_get_current_buf()

  local client
  if not vim.wait(30000, function()
    client = vim.lsp.get_clients({ bufnr = buf, name = "diffucoder" })[1]
    return client ~= nil and client.initialized
  end, 20) then error("the server did not initialize") end
  step("initialized")
  report.offset_encoding = client.offset_encoding
  report.inline_provider = client.server_capabilities.inlineCompletionProvider ~= nil
  if not vim.wait(120000, function() return ready end, 20) then error("the model never became ready") end
  step("ready")

  -- Type into the buffer like a user (Neovim sends incremental didChange), then ask at the cursor.
  -- Line 2 (0-based 1) is `    greeting = "héllo 😀 " + ` ; append a name and an opening paren.
  local line = vim.api.nvim_buf_get_lines(buf, 1, 2, true)[1]
  vim.api.nvim_buf_set_text(buf, 1, #line, 1, #line, { "str(" })
  vim.api.nvim_buf_set_text(buf, 1, #line + 4, 1, #line + 4, { ")" })
  vim.api.nvim_win_set_cursor(0, { 2, #line + 4 }) -- between "(" and ")", byte column
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  report.position = params.position

  local res = vim.lsp.buf_request_sync(buf, "textDocument/completion", params, 120000)
  if not res or not res[client.id] then error("no completion response") end
  if res[client.id].err then error("completion error: " .. vim.inspect(res[client.id].err)) end
  report.completion = res[client.id].result
  step("completion")

  -- A block completion at the end of the function's last line, and the inline request on it.
  local last = vim.api.nvim_buf_line_count(buf)
  local text = vim.api.nvim_buf_get_lines(buf, last - 1, last, true)[1]
  vim.api.nvim_win_set_cursor(0, { last, #text })
  local iparams = vim.lsp.util.make_position_params(0, client.offset_encoding)
  iparams.context = { triggerKind = 1 }
  report.inline_position = iparams.position
  res = vim.lsp.buf_request_sync(buf, "textDocument/inlineCompletion", iparams, 120000)
  if not res or not res[client.id] then error("no inlineCompletion response") end
  if res[client.id].err then error("inlineCompletion error: " .. vim.inspect(res[client.id].err)) end
  report.inline = res[client.id].result
  step("inline")
  report.buffer = vim.api.nvim_buf_get_lines(buf, 0, -1, true)
end)

finish(ok, ok and nil or tostring(err))
