#!/usr/bin/env python3
"""The README's picture of ghost text in VS Code: docs/images/vscode-ghost.png.

Opens a short Python file in a real VS Code (code-server in headless Chromium, driven by playwright-core) with the
packaged extension and the bundled default model, types ``return `` inside a method whose sibling below shows the
pattern to follow, asks for an inline suggestion (Alt+\\), waits for the ghost text and saves a screenshot cropped
to the editor area (quantized PNG). Reuses the VS Code end-to-end test's helpers (tests/editors/test_vscode_e2e.py:
code-server with the extension installed, in an isolated home), so it needs what scripts/vscode-e2e.sh installs:

    bash scripts/vscode-e2e.sh       # once: installs Chromium, Node 24, code-server, the .vsix (and runs the tests)
    .venv/bin/python scripts/editor_screenshot.py [--out PATH] [--model default|PATH] [--theme NAME]

Takes ~1-2.5 min on a CPU (code-server start, model load, one completion). Prints what the ghost text says; exits 1
if no ghost text came. The completion is whatever the model suggests (greedy, the server's defaults): nothing in
the product knows this example.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "editors"))

from test_vscode_e2e import (  # noqa: E402  (the e2e test's helpers, imported from its folder)
    BASE_SETTINGS,
    CHROMIUM,
    NODE,
    VSCODE_EXT,
    _missing,
    code_server,
    output_log,
)

CURSOR = "<|cursor|>"  # where the typing happens; not in the file written
TYPED = "return "
EXAMPLE = f'''import math


class Vector:
    """A vector in the plane."""

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __add__(self, other):
        {CURSOR}

    def __sub__(self, other):
        return Vector(self.x - other.x, self.y - other.y)

    def length(self):
        return math.hypot(self.x, self.y)
'''

# Drives the workbench: open the file, wait for the server, type at the cursor, Alt+\, wait for the ghost text to
# settle, screenshot the editor part. Written next to the run (playwright-core is loaded from the extension's
# node_modules by path, as an ES module outside that folder would not find it).
DRIVER = r"""
import { writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
const require = createRequire(join(process.env.DC_EXT, "package.json"));
const { chromium } = require("playwright-core");

const env = process.env;
const job = JSON.parse(env.DC_JOB);
const report = { steps: [] };
const save = () => writeFileSync(join(env.DC_OUT, "report.json"), JSON.stringify(report, null, 2));
const step = (name) => { report.steps.push(name); save(); };
const GHOST = ".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text";
let page;

async function main() {
  const ctx = await chromium.launchPersistentContext(env.DC_PROFILE, {
    executablePath: env.DC_CHROMIUM,
    headless: true,
    viewport: { width: job.width, height: job.height },
    deviceScaleFactor: job.scale,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  page = ctx.pages()[0] ?? (await ctx.newPage());
  await page.goto(env.DC_URL, { waitUntil: "domcontentloaded", timeout: 60000 });
  await page.locator(".monaco-workbench").waitFor({ timeout: 90000 });
  step("workbench");

  // Open the file (Ctrl+P), as the e2e driver does.
  await page.keyboard.press("Control+P");
  const input = page.locator(".quick-input-widget input");
  await input.waitFor({ state: "visible", timeout: 15000 });
  await input.fill(job.file);
  await page.locator(".quick-input-list .monaco-list-row", { hasText: job.file }).first().waitFor({ timeout: 15000 });
  await page.keyboard.press("Enter");
  await page.locator(".tab.active", { hasText: job.file }).waitFor({ timeout: 30000 });
  step("opened");

  const settled = page
    .locator('[aria-label="DiffuCoder ready"], [aria-label="DiffuCoder stopped"], [aria-label="DiffuCoder error"]')
    .first();
  await settled.waitFor({ timeout: 240000 });
  const label = await settled.getAttribute("aria-label");
  if (label !== "DiffuCoder ready") throw new Error(`the status bar says ${label}`);
  step("ready");

  // Only the editor in the window: no side bar, no notifications.
  if (await page.locator(".part.sidebar").isVisible()) await page.keyboard.press("Control+B");
  await page.evaluate(() => document.querySelectorAll(".notification-toast .codicon-notifications-clear, .notification-toast .codicon-close").forEach((b) => b.click()));

  const lines = page.locator(".editor-group-container.active .monaco-editor .view-lines");
  await lines.click();
  await page.keyboard.press("Control+Home");
  for (let i = 0; i < job.line; i++) await page.keyboard.press("ArrowDown");
  await page.keyboard.press("End");
  await page.keyboard.type(job.typed, { delay: 60 });
  await page.keyboard.press("Alt+Backslash");
  await page.locator(GHOST).first().waitFor({ state: "attached", timeout: 180000 });
  // Settled: the same ghost text for 1.5 s.
  const ghostText = () => page.$$eval(GHOST, (els) => els.map((e) => e.textContent).join(""));
  let last = await ghostText();
  for (let stable = 0; stable < 5; ) {
    await page.waitForTimeout(300);
    const now = await ghostText();
    stable = now === last ? stable + 1 : 0;
    last = now;
  }
  report.ghost = last.replace(/\u00a0/g, " ");
  report.line = await page.$$eval(".editor-group-container.active .monaco-editor .view-line", (els, typed) =>
    els.map((e) => e.textContent.replace(/\u00a0/g, " ")).find((t) => t.includes(typed.trim())) ?? "", job.typed);
  await page.mouse.move(job.width - 5, job.height - 5); // no hover widget
  await page.waitForTimeout(300);
  const box = await page.locator(".part.editor").boundingBox();
  await page.screenshot({ path: join(env.DC_OUT, "editor.png"), clip: box });
  step("shot");
  await ctx.close();
  report.ok = true;
  save();
}

main().catch(async (err) => {
  report.ok = false;
  report.error = String(err && err.stack ? err.stack : err).slice(0, 4000);
  save();
  if (page) await page.screenshot({ path: join(env.DC_OUT, "error.png") }).catch(() => {});
  process.exit(1);
});
"""


def optimise(src: Path, dest: Path, max_bytes: int) -> int:
    """``src`` as a palette PNG at ``dest`` (fewer colours until it is under ``max_bytes``); its size."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for colors in (256, 128, 64):
        img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            dest, optimize=True
        )
        if dest.stat().st_size <= max_bytes:
            break
    return dest.stat().st_size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "vscode-ghost.png"))
    p.add_argument("--model", default="default", help="default (the bundled model) or a checkpoint folder")
    p.add_argument("--theme", default="Default Dark Modern")
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--height", type=int, default=560)
    p.add_argument(
        "--scale", type=float, default=2.0, help="device pixel ratio (2: sharp on high-density screens)"
    )
    p.add_argument("--max-kb", type=int, default=150)
    p.add_argument(
        "--keep",
        help="keep the run (logs, raw screenshot) in this folder; default: a temporary one, removed on success",
    )
    args = p.parse_args()

    missing = _missing()
    if missing:
        print("missing: " + ", ".join(missing) + "; run scripts/vscode-e2e.sh once", file=sys.stderr)
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="dc-shot-"))
    tmp.mkdir(parents=True, exist_ok=True)
    workspace = tmp / "workspace"
    workspace.mkdir(exist_ok=True)
    before, _ = EXAMPLE.split(CURSOR)
    (workspace / "vector.py").write_text(EXAMPLE.replace(CURSOR, ""))
    (tmp / "drive.mjs").write_text(DRIVER)
    settings = dict(
        BASE_SETTINGS,
        **{
            "diffucoder.server.path": str(Path(sys.executable).parent / "diffucoder"),
            "workbench.colorTheme": args.theme,
            "editor.fontSize": 15,
            "editor.minimap.enabled": False,
            "editor.stickyScroll.enabled": False,
            "breadcrumbs.enabled": False,
            "workbench.tips.enabled": False,
            "workbench.editor.enablePreview": False,
            "editor.inlineSuggest.showToolbar": "never",
        },
    )
    if args.model != "default":
        settings["diffucoder.model"] = args.model
    job = {
        "file": "vector.py",
        "line": before.count("\n"),
        "typed": TYPED,
        "width": args.width,
        "height": args.height,
        "scale": args.scale,
    }
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    with code_server(tmp, settings) as (url, denv):
        proc = subprocess.run(
            [str(NODE), str(tmp / "drive.mjs")],
            env=dict(
                denv,
                DC_URL=f"{url}?folder={workspace}",
                DC_OUT=str(out),
                DC_EXT=str(VSCODE_EXT),
                DC_CHROMIUM=CHROMIUM,
                DC_JOB=json.dumps(job),
            ),
            capture_output=True,
            text=True,
            timeout=540,
        )
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if not report.get("ok"):
        print(
            f"driver failed (rc {proc.returncode}): {report.get('error') or proc.stderr[-3000:]}",
            file=sys.stderr,
        )
        print(f"steps: {report.get('steps')}; run folder: {tmp}", file=sys.stderr)
        print("DiffuCoder log (tail):\n" + output_log(Path(denv["DC_USER_DATA"]))[-2000:], file=sys.stderr)
        return 1
    size = optimise(out / "editor.png", Path(args.out), args.max_kb * 1024)
    print(f"line: {report['line']!r}")
    print(f"ghost text: {report['ghost']!r}")
    print(f"wrote {args.out} ({size // 1024} KB) in {time.monotonic() - t0:.0f} s")
    if args.keep:
        print(f"run folder: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # ~20 MB: Chromium's profile, code-server's data
    return 0


if __name__ == "__main__":
    sys.exit(main())
