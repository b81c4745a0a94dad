-- DiffuCoder for Neovim (0.11+): the `diffucoder serve` language server through vim.lsp.config/vim.lsp.enable,
-- ghost text from textDocument/inlineCompletion, the server's fill-holes / regenerate commands, and a status
-- string for statuslines (fed by the server's `diffucoder/status` notifications).
local M = {}

M.name = "diffucoder"

local defaults = {
  -- How to start the server: a list, or nil for `diffucoder serve` (or `{python} -m diffucoder_lsp.server`).
  cmd = nil,
  python = nil,
  filetypes = nil, -- nil: every buffer with a filetype; or a list such as { "python", "lua" }
  root_markers = { "pyproject.toml", "setup.py", "setup.cfg", ".git" },
  -- The server's settings (camelCase keys, exactly as the server reads them; see :help diffucoder-settings).
  settings = {},
  ghost = {
    enabled = true,
    auto = true, -- ask while typing in insert mode (else only with the trigger key)
    debounce_ms = 75,
    native = "auto", -- use vim.lsp.inline_completion when Neovim has it (0.12+); false: this plugin's ghost text
    hl_group = "DiffucoderGhost",
    keymaps = {
      accept = "<Tab>",
      accept_word = "<M-w>",
      accept_line = "<M-l>",
      dismiss = "<C-]>",
      trigger = "<M-\\>",
    },
  },
  commands = true,
  on_attach = nil, -- function(client, bufnr)
}

M.config = vim.deepcopy(defaults)
M.state = { status = nil, statuses = {} }

local function server_cmd(cfg)
  if cfg.cmd then return cfg.cmd end
  if cfg.python then return { cfg.python, "-m", "diffucoder_lsp.server" } end
  return { "diffucoder", "serve" }
end
M.server_cmd = server_cmd

--- The running diffucoder client for a buffer (default: the current one), or nil.
function M.client(bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  return vim.lsp.get_clients({ bufnr = bufnr, name = M.name })[1]
end

local function on_status(_, result)
  if type(result) ~= "table" then return end
  M.state.status = result
  table.insert(M.state.statuses, result)
  if #M.state.statuses > 50 then table.remove(M.state.statuses, 1) end
  vim.schedule(function()
    pcall(vim.api.nvim_exec_autocmds, "User", { pattern = "DiffucoderStatus", modeline = false, data = result })
    pcall(vim.cmd.redrawstatus)
  end)
end

--- A short status string for a statusline: "DiffuCoder ready 120ms", "" when no server runs.
function M.statusline()
  local s = M.state.status
  if not s then return next(vim.lsp.get_clients({ name = M.name })) and "DiffuCoder starting" or "" end
  local text = "DiffuCoder " .. tostring(s.state)
  if (s.state == "ready" or s.state == "busy") and type(s.lastLatencyMs) == "number" then
    text = text .. string.format(" %dms", math.floor(s.lastLatencyMs + 0.5))
  end
  return text
end

--- The last `diffucoder/status` payload (state, model, device, lastLatencyMs, message), or nil.
function M.status() return M.state.status end

local function notify(msg, level) vim.notify("DiffuCoder: " .. msg, level or vim.log.levels.INFO) end

--- Run a server command on a buffer; `callback(err, result)` gets `{applied, holes}`.
local function exec(bufnr, command, arguments, title, callback)
  local client = M.client(bufnr)
  if not client then
    notify("the server is not attached to this buffer", vim.log.levels.WARN)
    if callback then callback("not attached", nil) end
    return
  end
  M.state.busy_command = title
  client:request("workspace/executeCommand", { command = command, arguments = arguments }, function(err, result)
    M.state.busy_command = nil
    if err then
      notify(title .. " failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    elseif type(result) == "table" and result.holes and result.holes > 0 and not result.applied then
      notify(title .. " was not applied (the buffer changed meanwhile, or the model failed)", vim.log.levels.WARN)
    end
    if callback then callback(err, result) end
  end, bufnr)
end

--- Fill every `<|mask|>` hole of the buffer (server command diffucoder.fillHoles).
function M.fill(bufnr, callback)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  exec(bufnr, "diffucoder.fillHoles", { vim.uri_from_bufnr(bufnr) }, "fill holes", callback)
end

local function lsp_position(bufnr, row, col, encoding)
  -- row 0-based, col 0-based byte index -> LSP position in the client's encoding
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
  col = math.min(col, #line)
  if encoding == "utf-8" then return { line = row, character = col } end
  return { line = row, character = vim.str_utfindex(line, encoding, col, false) }
end

--- Regenerate a range (0-based rows, byte columns, end exclusive) with the model (diffucoder.regenerateSelection).
function M.regenerate(bufnr, srow, scol, erow, ecol, callback)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local client = M.client(bufnr)
  local enc = client and client.offset_encoding or "utf-16"
  local range = { start = lsp_position(bufnr, srow, scol, enc), ["end"] = lsp_position(bufnr, erow, ecol, enc) }
  exec(bufnr, "diffucoder.regenerateSelection", { vim.uri_from_bufnr(bufnr), range }, "regenerate", callback)
end

-- The range of a :command call: charwise from the visual marks when the command came from a charwise visual
-- selection on those lines, else whole lines.
local function command_range(opts)
  local bufnr = vim.api.nvim_get_current_buf()
  local l1, l2 = opts.line1, opts.line2
  local s, e = vim.api.nvim_buf_get_mark(bufnr, "<"), vim.api.nvim_buf_get_mark(bufnr, ">")
  if vim.fn.visualmode() == "v" and s[1] == l1 and e[1] == l2 then
    local last = vim.api.nvim_buf_get_lines(bufnr, e[1] - 1, e[1], false)[1] or ""
    local ecol = e[2]
    if ecol >= #last then
      ecol = #last
    else
      local char = vim.fn.strpart(last, ecol, 1, true) -- the whole (multibyte) character under the mark
      ecol = ecol + math.max(#char, 1)
    end
    return s[1] - 1, s[2], e[1] - 1, ecol
  end
  local count = vim.api.nvim_buf_line_count(bufnr)
  if l2 < count then return l1 - 1, 0, l2, 0 end
  local last = vim.api.nvim_buf_get_lines(bufnr, l2 - 1, l2, false)[1] or ""
  return l1 - 1, 0, l2 - 1, #last
end

local function status_report()
  local s = M.state.status
  if not M.client() and not next(vim.lsp.get_clients({ name = M.name })) then
    return "DiffuCoder: no server running (is the buffer's filetype enabled?)"
  end
  if not s then return "DiffuCoder: starting" end
  local parts = { "DiffuCoder: " .. tostring(s.state) }
  if s.model and s.model ~= "" then table.insert(parts, "model " .. s.model) end
  if s.device and s.device ~= "" then table.insert(parts, "on " .. s.device) end
  if type(s.lastLatencyMs) == "number" then
    table.insert(parts, string.format("last completion %dms", math.floor(s.lastLatencyMs + 0.5)))
  end
  local text = table.concat(parts, " | ")
  -- the ready message is "MODEL on DEVICE", already shown: only a message that adds something (an error, what
  -- is loading) is appended
  local says_only = s.message == tostring(s.model) .. " on " .. tostring(s.device)
  if s.message and s.message ~= "" and not says_only then text = text .. " (" .. s.message .. ")" end
  return text
end
M.status_report = status_report

--- Stop the server and start it again for every buffer it applies to.
function M.restart()
  vim.lsp.enable(M.name, false)
  M.state.status = nil
  local tries = 0
  local function again()
    tries = tries + 1
    if next(vim.lsp.get_clients({ name = M.name, _uninitialized = true })) and tries < 100 then
      vim.defer_fn(again, 50)
    else
      vim.lsp.enable(M.name, true)
    end
  end
  again()
end

--- A settings table as a JSON object: an empty Lua table encodes as [] (the server then warned "settings must
--- be an object, got list" on a plain setup({})), vim.empty_dict() as {}.
local function as_object(t)
  if type(t) ~= "table" or next(t) == nil then return vim.empty_dict() end
  return t
end
M.as_object = as_object

--- Send new server settings (merged into the configured ones) with workspace/didChangeConfiguration.
function M.update_settings(settings)
  M.config.settings = vim.tbl_deep_extend("force", M.config.settings, settings or {})
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    client.settings = { diffucoder = as_object(M.config.settings) }
    client:notify("workspace/didChangeConfiguration", { settings = { diffucoder = as_object(M.config.settings) } })
  end
end

local function create_commands()
  vim.api.nvim_create_user_command("DiffucoderFill", function() M.fill(0) end, {
    desc = "DiffuCoder: fill every <|mask|> hole of the buffer",
  })
  vim.api.nvim_create_user_command("DiffucoderRegenerate", function(opts)
    local srow, scol, erow, ecol = command_range(opts)
    M.regenerate(0, srow, scol, erow, ecol)
  end, { range = true, desc = "DiffuCoder: regenerate the selected code (visual range or lines)" })
  vim.api.nvim_create_user_command("DiffucoderStatus", function()
    vim.api.nvim_echo({ { status_report() } }, false, {})
  end, { desc = "DiffuCoder: model state and last latency" })
  vim.api.nvim_create_user_command("DiffucoderRestart", function() M.restart() end, {
    desc = "DiffuCoder: restart the language server",
  })
  vim.api.nvim_create_user_command("DiffucoderSuggest", function() require("diffucoder.ghost").trigger(0) end, {
    desc = "DiffuCoder: ask for ghost text at the cursor",
  })
end

--- Configure and enable the client. See :help diffucoder-setup.
function M.setup(opts)
  if vim.fn.has("nvim-0.11") ~= 1 then
    notify("needs Neovim 0.11 or newer (vim.lsp.config)", vim.log.levels.ERROR)
    return
  end
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts or {})
  local cfg = M.config
  local ghost = require("diffucoder.ghost")
  ghost.setup(cfg.ghost)
  vim.lsp.config(M.name, {
    cmd = server_cmd(cfg),
    filetypes = cfg.filetypes,
    root_markers = cfg.root_markers,
    init_options = as_object(cfg.settings),
    settings = { diffucoder = as_object(cfg.settings) },
    handlers = { ["diffucoder/status"] = on_status },
    on_attach = function(client, bufnr)
      ghost.attach(client, bufnr)
      if cfg.on_attach then cfg.on_attach(client, bufnr) end
    end,
    on_exit = function()
      vim.schedule(function()
        if not next(vim.lsp.get_clients({ name = M.name })) then M.state.status = nil end
        pcall(vim.cmd.redrawstatus)
      end)
    end,
  })
  vim.lsp.enable(M.name)
  if cfg.commands then create_commands() end
end

return M
