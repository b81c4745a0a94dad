// Unit tests of the server discovery (src/discovery.ts) with a fake file system: `npm run test:unit`.
import assert from "node:assert/strict";
import { test } from "node:test";
import { commandLine, type DiscoveryInput, findServer, notFoundMessage, type Probe } from "../../src/discovery.ts";

const base: DiscoveryInput = {
  serverPath: "",
  pythonPath: "",
  extraArgs: [],
  pathEnv: "/usr/bin:/bin",
  workspaceFolders: ["/ws"],
  home: "/home/u",
  platform: "linux",
};

/** A probe over a set of executable files; `modules`: interpreters that have diffucoder_lsp. */
function fake(files: string[], opts: { modules?: string[]; interpreter?: string } = {}) {
  const seen: string[] = [];
  const probe: Probe = {
    isExecutable: async (f) => {
      seen.push(f);
      return files.includes(f);
    },
    hasServerModule: async (py) => (opts.modules ?? []).includes(py),
    activeInterpreter: async () => {
      seen.push("<python extension>");
      return opts.interpreter;
    },
  };
  return { probe, seen };
}

test("diffucoder on PATH comes first, as an absolute path", async () => {
  const { probe } = fake(["/bin/diffucoder", "/ws/.venv/bin/diffucoder"]);
  const d = await findServer({ ...base, extraArgs: ["--device", "cpu"] }, probe);
  assert.deepEqual(d.server, { command: "/bin/diffucoder", args: ["serve", "--device", "cpu"], where: "PATH" });
});

test("not on PATH: the workspace's .venv, then venv, in each folder", async () => {
  let d = await findServer(base, fake(["/ws/.venv/bin/diffucoder", "/ws/venv/bin/diffucoder"]).probe);
  assert.equal(d.server?.command, "/ws/.venv/bin/diffucoder");
  assert.equal(d.server?.where, "the workspace's .venv");
  d = await findServer(base, fake(["/ws/venv/bin/diffucoder"]).probe);
  assert.equal(d.server?.command, "/ws/venv/bin/diffucoder");
  d = await findServer({ ...base, workspaceFolders: ["/a", "/b"] }, fake(["/b/.venv/bin/diffucoder"]).probe);
  assert.equal(d.server?.command, "/b/.venv/bin/diffucoder");
});

test("then the Python extension's interpreter, when diffucoder_lsp is installed in it", async () => {
  const py = "/opt/env/bin/python";
  let d = await findServer(base, fake([py], { interpreter: py, modules: [py] }).probe);
  assert.deepEqual(d.server, {
    command: py,
    args: ["-m", "diffucoder_lsp.server"],
    where: "the Python extension's interpreter",
  });
  // an interpreter without the package is passed over (and said so), on to ~/.local/bin
  d = await findServer(base, fake([py, "/home/u/.local/bin/diffucoder"], { interpreter: py }).probe);
  assert.equal(d.server?.command, "/home/u/.local/bin/diffucoder");
  assert.ok(d.tried.some((t) => t.includes(py) && t.includes("has no diffucoder_lsp")), d.tried.join("\n"));
});

test("the Python extension is asked only when PATH and the workspace have no server", async () => {
  const { probe, seen } = fake(["/ws/.venv/bin/diffucoder"]);
  await findServer(base, probe);
  assert.ok(!seen.includes("<python extension>"));
});

test("nothing found: every place is listed, and one message says what to do", async () => {
  const { probe, seen } = fake([]);
  const d = await findServer(base, probe);
  assert.equal(d.server, undefined);
  assert.deepEqual(seen, [
    "/usr/bin/diffucoder",
    "/bin/diffucoder",
    "/ws/.venv/bin/diffucoder",
    "/ws/venv/bin/diffucoder",
    "<python extension>",
    "/home/u/.local/bin/diffucoder",
  ]);
  assert.equal(d.tried.length, 5);
  const message = notFoundMessage(d);
  assert.match(message, /no language server found/);
  assert.match(message, /pip install diffucoder-lsp/);
  assert.match(message, /diffucoder\.server\.path/);
});

test("an explicit server.path is used alone, and a wrong one is reported, not worked around", async () => {
  let d = await findServer({ ...base, serverPath: "/x/dc" }, fake(["/x/dc", "/bin/diffucoder"]).probe);
  assert.deepEqual(d.server, { command: "/x/dc", args: ["serve"], where: "diffucoder.server.path" });
  d = await findServer({ ...base, serverPath: "~/bin/dc" }, fake(["/home/u/bin/dc"]).probe);
  assert.equal(d.server?.command, "/home/u/bin/dc");
  d = await findServer({ ...base, serverPath: "/x/missing" }, fake(["/bin/diffucoder"]).probe);
  assert.equal(d.server, undefined);
  assert.equal(d.setting, "server.path");
  assert.match(notFoundMessage(d), /diffucoder\.server\.path: \/x\/missing is not an executable file/);
});

test("server.pythonPath runs `python -m diffucoder_lsp.server`, and must have the package", async () => {
  const py = "/usr/bin/python3";
  let d = await findServer({ ...base, pythonPath: "python3" }, fake([py], { modules: [py] }).probe);
  assert.deepEqual(d.server, {
    command: py,
    args: ["-m", "diffucoder_lsp.server"],
    where: "diffucoder.server.pythonPath",
  });
  d = await findServer({ ...base, pythonPath: py }, fake([py, "/bin/diffucoder"]).probe);
  assert.equal(d.server, undefined);
  assert.equal(d.setting, "server.pythonPath");
  assert.match(notFoundMessage(d), /has no diffucoder_lsp/);
});

test("Windows layout: Scripts\\diffucoder.exe, no ~/.local/bin", async () => {
  const { probe, seen } = fake([]);
  await findServer({ ...base, platform: "win32", pathEnv: "C:\\bin", workspaceFolders: ["C:\\ws"] }, probe);
  assert.ok(seen.some((f) => f.endsWith("Scripts/diffucoder.exe") || f.endsWith("Scripts\\diffucoder.exe")), seen.join());
  assert.ok(!seen.some((f) => f.includes(".local")));
});

test("command line for messages", () => {
  assert.equal(commandLine({ command: "/a b/dc", args: ["serve"], where: "PATH" }), '"/a b/dc" serve');
});
