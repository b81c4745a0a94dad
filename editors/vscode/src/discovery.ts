// Where the extension finds the language server. The extension host does not inherit a shell's PATH (nor an
// activated virtual environment), so besides PATH it looks where a Python user installs `diffucoder-lsp`.
// No `vscode` import here: the unit tests run it in plain Node with a fake file system.
import * as path from "node:path";

/** A way to start the server: an executable with `serve`, or an interpreter with `-m diffucoder_lsp.server`. */
export interface ServerCandidate {
  command: string;
  args: string[];
  /** Where it was found, for the log and the error message ("the workspace's .venv", "PATH", ...). */
  where: string;
}

export interface DiscoveryInput {
  serverPath: string; // diffucoder.server.path ("" when unset)
  pythonPath: string; // diffucoder.server.pythonPath ("" when unset)
  extraArgs: string[]; // diffucoder.server.args
  pathEnv: string | undefined; // PATH of the environment the server will get
  workspaceFolders: string[]; // file-system paths of the open workspace's folders
  home: string; // the user's home folder
  platform: string; // process.platform
}

/** What discovery may look at; the extension passes the file system, a child process and the Python extension. */
export interface Probe {
  /** A file that can be executed. */
  isExecutable(file: string): Promise<boolean>;
  /** `python` imports `diffucoder_lsp` (true when it cannot tell, e.g. on a timeout: starting it will say). */
  hasServerModule(python: string): Promise<boolean>;
  /** The interpreter selected in the Python extension (ms-python.python), when that extension is installed. */
  activeInterpreter(): Promise<string | undefined>;
}

export interface Discovery {
  server?: ServerCandidate;
  /** Each place looked at, in order, and why it was not used (the last one is the one used, when found). */
  tried: string[];
  /** The explicit setting that was wrong, when the user named the server and it is not there. */
  setting?: "server.path" | "server.pythonPath";
}

export const SERVER_MODULE = "diffucoder_lsp.server";

function exeName(name: string, platform: string): string {
  return platform === "win32" ? `${name}.exe` : name;
}

/** The folder of a virtual environment's executables. */
function venvBin(venv: string, platform: string): string {
  return platform === "win32" ? path.join(venv, "Scripts") : path.join(venv, "bin");
}

/** `name` looked up in a PATH string (a name with a folder part is returned as is, when executable). */
export async function which(
  name: string,
  pathEnv: string | undefined,
  platform: string,
  isExecutable: (file: string) => Promise<boolean>,
): Promise<string | undefined> {
  const sep = platform === "win32" ? ";" : ":";
  if (name.includes("/") || (platform === "win32" && name.includes("\\"))) {
    return (await isExecutable(name)) ? name : undefined;
  }
  const names = platform === "win32" && !/\.[a-z0-9]+$/i.test(name) ? [`${name}.exe`, name] : [name];
  for (const dir of (pathEnv ?? "").split(sep)) {
    if (!dir) continue;
    for (const n of names) {
      const file = path.join(dir, n);
      if (await isExecutable(file)) return file;
    }
  }
  return undefined;
}

function expandHome(p: string, home: string): string {
  return p === "~" || p.startsWith("~/") ? path.join(home, p.slice(1)) : p;
}

/**
 * Find the server. `diffucoder.server.path`, else `diffucoder.server.pythonPath`, is used alone when set (a
 * wrong setting is reported, not worked around). Otherwise, in order: `diffucoder` on PATH, each workspace
 * folder's `.venv` and `venv`, the Python extension's selected interpreter (when it has `diffucoder_lsp`),
 * and `~/.local/bin/diffucoder` (where `pip install --user` and pipx put it).
 */
export async function findServer(input: DiscoveryInput, probe: Probe): Promise<Discovery> {
  const { platform, extraArgs } = input;
  const tried: string[] = [];
  const exe = (command: string, where: string): ServerCandidate => ({
    command,
    args: ["serve", ...extraArgs],
    where,
  });
  const py = (command: string, where: string): ServerCandidate => ({
    command,
    args: ["-m", SERVER_MODULE, ...extraArgs],
    where,
  });

  const serverPath = expandHome(input.serverPath.trim(), input.home);
  if (serverPath) {
    const file = await which(serverPath, input.pathEnv, platform, probe.isExecutable);
    if (file) return { server: exe(file, "diffucoder.server.path"), tried: [`diffucoder.server.path: ${file}`] };
    return {
      tried: [`diffucoder.server.path: ${serverPath} is not an executable file`],
      setting: "server.path",
    };
  }
  const pythonPath = expandHome(input.pythonPath.trim(), input.home);
  if (pythonPath) {
    const file = await which(pythonPath, input.pathEnv, platform, probe.isExecutable);
    if (!file) {
      return {
        tried: [`diffucoder.server.pythonPath: ${pythonPath} is not an executable file`],
        setting: "server.pythonPath",
      };
    }
    if (!(await probe.hasServerModule(file))) {
      return {
        tried: [`diffucoder.server.pythonPath: ${file} has no diffucoder_lsp (pip install diffucoder-lsp with it)`],
        setting: "server.pythonPath",
      };
    }
    return { server: py(file, "diffucoder.server.pythonPath"), tried: [`diffucoder.server.pythonPath: ${file}`] };
  }

  const name = exeName("diffucoder", platform);
  const onPath = await which("diffucoder", input.pathEnv, platform, probe.isExecutable);
  if (onPath) return { server: exe(onPath, "PATH"), tried: [`PATH: ${onPath}`] };
  tried.push("diffucoder on PATH: not found");

  for (const folder of input.workspaceFolders) {
    for (const venv of [".venv", "venv"]) {
      const file = path.join(venvBin(path.join(folder, venv), platform), name);
      if (await probe.isExecutable(file)) {
        tried.push(`the workspace's ${venv}: ${file}`);
        return { server: exe(file, `the workspace's ${venv}`), tried };
      }
      tried.push(`${file}: not found`);
    }
  }

  let interpreter: string | undefined;
  try {
    interpreter = await probe.activeInterpreter();
  } catch {
    interpreter = undefined;
  }
  if (interpreter === undefined) {
    tried.push("the Python extension's interpreter: none (the extension is not installed or has none selected)");
  } else if (!(await probe.isExecutable(interpreter))) {
    tried.push(`the Python extension's interpreter ${interpreter}: not an executable file`);
  } else if (!(await probe.hasServerModule(interpreter))) {
    tried.push(`the Python extension's interpreter ${interpreter}: has no diffucoder_lsp`);
  } else {
    tried.push(`the Python extension's interpreter: ${interpreter}`);
    return { server: py(interpreter, "the Python extension's interpreter"), tried };
  }

  if (platform !== "win32") {
    const file = path.join(input.home, ".local", "bin", name);
    if (await probe.isExecutable(file)) {
      tried.push(`~/.local/bin: ${file}`);
      return { server: exe(file, "~/.local/bin"), tried };
    }
    tried.push(`${file}: not found`);
  }
  return { tried };
}

/** The one message shown when no server can be started from what discovery found. */
export function notFoundMessage(d: Discovery): string {
  if (d.setting) {
    return `DiffuCoder: ${d.tried[0]}. Fix diffucoder.${d.setting}, or clear it to let the extension look for the server.`;
  }
  return (
    "DiffuCoder: no language server found (looked for diffucoder on PATH, in the workspace's .venv and venv, " +
    "in the Python extension's interpreter and in ~/.local/bin). Install it with `pip install diffucoder-lsp`, " +
    "or set diffucoder.server.path or diffucoder.server.pythonPath."
  );
}

/** The command line as one string, for messages. */
export function commandLine(c: ServerCandidate): string {
  return [c.command, ...c.args].map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(" ");
}
