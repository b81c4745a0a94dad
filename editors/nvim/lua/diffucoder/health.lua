-- :checkhealth diffucoder: is the plugin set up, can the server start, what does it report, are the settings
-- the server's own. Everything a user would otherwise find out from a silent editor.
local M = {}

local function check_setup()
  vim.health.start("diffucoder: setup")
  if vim.fn.has("nvim-0.11") == 1 then
    vim.health.ok("Neovim " .. tostring(vim.version()))
  else
    vim.health.error("Neovim 0.11 or newer is needed (vim.lsp.config)")
  end
  local dc = package.loaded["diffucoder"]
  if not dc or not dc.config then
    vim.health.warn("require('diffucoder').setup({}) has not been called", { "Call it from your init.lua" })
    return nil
  end
  vim.health.ok("setup() called")
  return dc
end

local function check_server(dc)
  vim.health.start("diffucoder: server")
  local cmd = dc.server_cmd(dc.config)
  local exe = cmd[1]
  if vim.fn.executable(exe) == 1 then
    vim.health.ok("server command: " .. table.concat(cmd, " ") .. " (" .. vim.fn.exepath(exe) .. ")")
  else
    vim.health.error("server command not found: " .. exe, {
      "pip install diffucoder-lsp in a virtual environment and put its bin/ on PATH",
      "or setup({ python = '/path/to/.venv/bin/python' }) or setup({ cmd = { ... } })",
    })
  end
  local clients = vim.lsp.get_clients({ name = dc.name })
  if #clients == 0 then
    vim.health.info("no server running (it starts with the first buffer of an enabled filetype)")
    return
  end
  vim.health.ok(string.format("%d server(s) running", #clients))
  local s = dc.status()
  if not s then
    vim.health.info("no status reported yet (the model may still be loading)")
  elseif s.state == "error" then
    vim.health.error("model: " .. tostring(s.message))
  else
    local latency = type(s.lastLatencyMs) == "number" and string.format(", last completion %d ms", s.lastLatencyMs) or ""
    vim.health.ok(string.format("model %s on %s: %s%s", tostring(s.model), tostring(s.device), s.state, latency))
  end
end

-- The settings the server reads (camelCase); a typo would otherwise only show as a server warning.
local KNOWN = {
  "model", "backendToken", "device", "dtype", "quant", "steps", "tokensPerStep", "temperature", "topP", "alg", "eosPenalty",
  "seed", "threshold", "entropyBound", "blockSize", "endEarly", "contextCache", "cacheRefreshEvery",
  "contextReuse", "warmContext", "speculate", "maxTokens", "maxTokensSingleLine", "rankLines", "rankInvoked",
  "minConfidence",
  "contextTokens", "prefixShare", "debounceMs", "enabledLanguages", "maxDocumentChars", "cacheSize",
}
M.KNOWN = KNOWN

local function check_settings(dc)
  vim.health.start("diffucoder: settings")
  local known = {}
  for _, k in ipairs(KNOWN) do known[k] = true end
  local settings = dc.config.settings or {}
  if type(settings) ~= "table" then
    vim.health.error("settings must be a table, got " .. type(settings))
    return
  end
  local unknown = {}
  for k, _ in pairs(settings) do
    if type(k) ~= "string" or not known[k] then table.insert(unknown, tostring(k)) end
  end
  if #unknown > 0 then
    table.sort(unknown)
    vim.health.warn("unknown settings (ignored by the server): " .. table.concat(unknown, ", "), {
      "Settings are camelCase, e.g. maxTokens; see :help diffucoder-settings",
    })
  elseif next(settings) == nil then
    vim.health.ok("no settings: the server's defaults")
  else
    vim.health.ok("settings: " .. vim.inspect(settings, { newline = " ", indent = "" }))
  end
end

function M.check()
  local dc = check_setup()
  if not dc then return end
  check_server(dc)
  check_settings(dc)
end

return M
