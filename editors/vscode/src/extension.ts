// DiffuCoder for VS Code: finds and starts `diffucoder serve` (stdio) with vscode-languageclient, which turns the
// server's textDocument/inlineCompletion answers into ghost text; adds Fill All Holes / Regenerate Selection (the
// server's workspace/executeCommand commands), a status bar item fed by `diffucoder/status`, and settings that
// mirror the server's, sent as initializationOptions and then as workspace/didChangeConfiguration.
import { execFile } from "node:child_process";
import { constants as fsConstants, promises as fs } from "node:fs";
import * as os from "node:os";
import * as readline from "node:readline";
import type { Readable } from "node:stream";
import * as vscode from "vscode";
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  type ErrorHandler,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  LogMessageNotification,
  MessageType,
  RevealOutputChannelOn,
  type ServerOptions,
  ShowMessageNotification,
  type ShowMessageParams,
  State,
} from "vscode-languageclient/node";
import {
  commandLine,
  type Discovery,
  findServer,
  notFoundMessage,
  type Probe,
  type ServerCandidate,
} from "./discovery";
import { ServerLog } from "./serverlog";
import {
  documentSelector,
  isNoSuggestionMessage,
  noSuggestionText,
  RESTART_KEYS,
  serverSettings,
  type Status,
  statusText,
} from "./settings";

const SECTION = "diffucoder";
const FILL_HOLES = "diffucoder.fillHoles"; // server commands
const REGENERATE = "diffucoder.regenerateSelection";

interface CommandResult {
  applied: boolean;
  holes: number;
}

/**
 * A LanguageClient that leaves a failed start to the extension's one error message: while it starts, its own
 * messages ("couldn't create connection to server", ...) go to the output channel only.
 */
class DiffuCoderClient extends LanguageClient {
  starting = true;
  everRunning = false;
  log: ServerLog | undefined;

  override error(message: string, data?: unknown, showNotification: boolean | "force" = true): void {
    super.error(message, data, this.starting ? false : showNotification);
  }
}

/** An inline-completion request the user made by hand, and what the server said about it. */
interface ExplicitRequest {
  serverMessage?: string;
}

let client: DiffuCoderClient | undefined;
let status: Status | undefined;
let statusItem: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
let trace: vscode.LogOutputChannel;
let generation = 0; // bumped by every start and stop: a start still looking for the server gives up
let discovering = false;
let note: vscode.Disposable | undefined;
const explicitRequests = new Set<ExplicitRequest>();

const config = () => vscode.workspace.getConfiguration(SECTION);

function running(): boolean {
  return client !== undefined && client.state === State.Running;
}

function starting(): boolean {
  return discovering || client?.state === State.Starting;
}

function refreshStatusItem(): void {
  const { text, tooltip } = statusText(status, running() || starting());
  statusItem.text = text;
  statusItem.tooltip = tooltip;
  const state = !running() && !starting() ? "stopped" : (status?.state ?? "starting");
  statusItem.accessibilityInformation = { label: `DiffuCoder ${state}`, role: "button" };
  statusItem.backgroundColor =
    status?.state === "error" ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
}

/** A short message in the status bar (replacing the previous one). */
function showNote(text: string): void {
  note?.dispose();
  note = vscode.window.setStatusBarMessage(text, 6000);
}

function lines(input: Readable, onLine: (line: string) => void): void {
  readline.createInterface({ input, crlfDelay: Infinity, terminal: false, historySize: 0 }).on("line", onLine);
}

function isEmpty(result: vscode.InlineCompletionItem[] | vscode.InlineCompletionList | null | undefined): boolean {
  if (!result) return true;
  return (Array.isArray(result) ? result : result.items).length === 0;
}

/** The server's window/showMessage, shown as the language client would, except the explanation of an empty
 * answer to a request made by hand: that one becomes the request's status-bar message. */
function showServerMessage(params: ShowMessageParams): void {
  if (params.type === MessageType.Info && explicitRequests.size > 0 && isNoSuggestionMessage(params.message)) {
    for (const request of explicitRequests) request.serverMessage = params.message;
    return;
  }
  if (params.type === MessageType.Error) void vscode.window.showErrorMessage(params.message);
  else if (params.type === MessageType.Warning) void vscode.window.showWarningMessage(params.message);
  else void vscode.window.showInformationMessage(params.message);
}

function serverEnv(cfg: vscode.WorkspaceConfiguration): NodeJS.ProcessEnv {
  return { ...process.env, ...(cfg.get<Record<string, string>>("server.env") ?? {}) };
}

function createClient(server: ServerCandidate, env: NodeJS.ProcessEnv): DiffuCoderClient {
  const cfg = config();
  const serverOptions: ServerOptions = {
    command: server.command,
    args: server.args,
    // No `transport`: with TransportKind.stdio the client would append --stdio, which `diffucoder serve` does not
    // take; without it the client still talks over the process's stdin/stdout.
    options: { env },
  };
  const log = new ServerLog(output);
  let c: DiffuCoderClient;
  let fallback: ErrorHandler | undefined;
  const defaults = () => (fallback ??= c.createDefaultErrorHandler());
  const clientOptions: LanguageClientOptions = {
    documentSelector: documentSelector(cfg),
    initializationOptions: serverSettings(cfg, true),
    outputChannel: output,
    traceOutputChannel: trace,
    revealOutputChannelOn: RevealOutputChannelOn.Never,
    // The server's stderr is its log ("LEVEL logger: message"): each line at its own level, not all as errors.
    stdioOptions: {
      stdout: (input, channel) => lines(input, (line) => channel.info(line)),
      stderr: (input) => lines(input, (line) => log.stderrLine(line)),
    },
    // A failed initialize is reported by the one message of start() (the client would show its own too).
    initializationFailedHandler: (error) => {
      output.error(`the server's initialization failed: ${error instanceof Error ? error.message : String(error)}`);
      return false;
    },
    errorHandler: {
      // While it starts, a write to a server that already exited fails ("write EPIPE"): the start fails and says so.
      error: (error, message, count) =>
        c.starting ? { action: ErrorAction.Continue, handled: true } : defaults().error(error, message, count),
      // A server that exits before it ever ran is not restarted in a loop: the failed start says why, once.
      closed: () =>
        c.everRunning ? defaults().closed() : { action: CloseAction.DoNotRestart, handled: true },
    },
    middleware: {
      // The same completion also comes as ghost text; the suggest list entry is opt-in.
      provideCompletionItem: (document, position, context, token, next) =>
        config().get<boolean>("completionItems") ? next(document, position, context, token) : undefined,
      // A suggestion asked for by hand (Alt+\) that brings nothing says so in the status bar.
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        if (context.triggerKind !== vscode.InlineCompletionTriggerKind.Invoke) {
          return next(document, position, context, token);
        }
        const request: ExplicitRequest = {};
        explicitRequests.add(request);
        try {
          const result = await next(document, position, context, token);
          if (isEmpty(result) && !token.isCancellationRequested) {
            showNote(noSuggestionText(status, request.serverMessage));
            if (request.serverMessage) output.info(request.serverMessage);
          }
          return result;
        } finally {
          explicitRequests.delete(request);
        }
      },
      workspace: {
        // If the server asks for its section, give it only the keys it knows (not server.* or trace.*).
        configuration: async (params, token, next) => {
          const result = await next(params, token);
          if (!Array.isArray(result)) return result;
          return params.items.map((item, i) =>
            item.section === SECTION ? serverSettings(config(), false) : result[i],
          );
        },
      },
    },
  };
  c = new DiffuCoderClient("diffucoder", "DiffuCoder", serverOptions, clientOptions);
  c.log = log;
  // Both replace the language client's own handlers once the server is initialized (it sends neither before).
  c.onNotification(LogMessageNotification.type, (p) => log.logMessage(p.type, p.message));
  c.onNotification(ShowMessageNotification.type, showServerMessage);
  c.onNotification("diffucoder/status", (s: Status) => {
    status = s;
    refreshStatusItem();
  });
  c.onDidChangeState(() => {
    if (c.state === State.Running) c.everRunning = true;
    if (c.state !== State.Running) status = undefined;
    refreshStatusItem();
  });
  return c;
}

/** Resolves to undefined when `promise` takes longer than `ms`. */
function within<T>(promise: Thenable<T>, ms: number): Promise<T | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), ms);
    Promise.resolve(promise).then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      () => {
        clearTimeout(timer);
        resolve(undefined);
      },
    );
  });
}

/** The part of the Python extension's public API (ms-python.python) used here. */
interface PythonExtensionApi {
  environments?: {
    getActiveEnvironmentPath(resource?: vscode.Uri): { id: string; path: string };
    resolveEnvironment(environment: unknown): Promise<{ executable?: { uri?: vscode.Uri } } | undefined>;
  };
}

/** The interpreter selected in the Python extension for `folder`, when that extension is installed. */
async function pythonExtensionInterpreter(folder: vscode.Uri | undefined): Promise<string | undefined> {
  const ext = vscode.extensions.getExtension<PythonExtensionApi>("ms-python.python");
  if (!ext) return undefined;
  const api = ext.isActive ? ext.exports : await within(ext.activate(), 20000);
  const envs = api?.environments;
  if (!envs?.getActiveEnvironmentPath) return undefined;
  const active = envs.getActiveEnvironmentPath(folder);
  const resolved = await within(envs.resolveEnvironment(active), 10000);
  return resolved?.executable?.uri?.fsPath ?? active?.path;
}

function discoveryProbe(env: NodeJS.ProcessEnv, folder: vscode.Uri | undefined): Probe {
  return {
    isExecutable: async (file) => {
      try {
        if (!(await fs.stat(file)).isFile()) return false;
        await fs.access(file, fsConstants.X_OK);
        return true;
      } catch {
        return false;
      }
    },
    hasServerModule: (python) =>
      new Promise((resolve) => {
        const code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('diffucoder_lsp') else 3)";
        execFile(python, ["-c", code], { env, timeout: 20000, windowsHide: true }, (err) => {
          // a timeout cannot tell: starting the server will
          resolve(!err || (err as { killed?: boolean }).killed === true);
        });
      }),
    activeInterpreter: () => pythonExtensionInterpreter(folder),
  };
}

async function discover(cfg: vscode.WorkspaceConfiguration, env: NodeJS.ProcessEnv): Promise<Discovery> {
  const folders = (vscode.workspace.workspaceFolders ?? []).filter(
    (f) => f.uri.scheme === "file" || f.uri.scheme === "vscode-remote",
  );
  return findServer(
    {
      serverPath: cfg.get<string>("server.path") ?? "",
      pythonPath: cfg.get<string>("server.pythonPath") ?? "",
      extraArgs: (cfg.get<string[]>("server.args") ?? []).filter((a) => typeof a === "string"),
      pathEnv: env.PATH ?? env.Path,
      workspaceFolders: folders.map((f) => f.uri.fsPath),
      home: os.homedir(),
      platform: process.platform,
    },
    discoveryProbe(env, folders[0]?.uri),
  );
}

/** The one error message of a server that cannot start, with its two ways out (not awaited: activation goes on). */
function startFailed(message: string): void {
  void vscode.window.showErrorMessage(message, "Open Settings", "Show Output").then((pick) => {
    if (pick === "Open Settings") void vscode.commands.executeCommand("workbench.action.openSettings", "diffucoder.server");
    if (pick === "Show Output") output.show(true);
  });
}

async function start(): Promise<void> {
  const gen = ++generation;
  const cfg = config();
  const env = serverEnv(cfg);
  discovering = true;
  refreshStatusItem();
  let found: Discovery;
  try {
    found = await discover(cfg, env);
  } finally {
    if (gen === generation) discovering = false;
  }
  if (gen !== generation) return; // stopped or restarted meanwhile
  const server = found.server;
  if (!server) {
    for (const line of found.tried) output.info(`looked for the server: ${line}`);
    const message = notFoundMessage(found);
    output.error(message);
    refreshStatusItem();
    startFailed(message);
    return;
  }
  output.info(`starting the server: ${commandLine(server)} (found in ${server.where})`);
  const c = createClient(server, env);
  client = c;
  refreshStatusItem();
  try {
    await c.start();
    c.starting = false;
  } catch (err) {
    if (client !== c) return;
    refreshStatusItem();
    await new Promise((resolve) => setTimeout(resolve, 300)); // the last lines of its stderr
    const why = c.log?.lastError ?? (err instanceof Error ? err.message : String(err));
    startFailed(`DiffuCoder: the server did not start (${commandLine(server)}, found in ${server.where}): ${why}`);
  }
}

async function stop(): Promise<void> {
  generation++;
  discovering = false;
  const c = client;
  client = undefined;
  status = undefined;
  if (c && c.state !== State.Stopped) {
    try {
      await c.stop(5000);
    } catch {
      // already gone
    }
  }
  refreshStatusItem();
}

async function restart(): Promise<void> {
  await stop();
  await start();
}

/** The running client, or a message saying why there is none. */
function need(): LanguageClient | undefined {
  if (client && running()) return client;
  void vscode.window.showWarningMessage("DiffuCoder: the server is not running (DiffuCoder: Restart Server).");
  return undefined;
}

async function runServerCommand(
  title: string,
  command: string,
  args: (c: LanguageClient, editor: vscode.TextEditor) => unknown[] | undefined,
): Promise<CommandResult | undefined> {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    void vscode.window.showInformationMessage("DiffuCoder: open a file first.");
    return undefined;
  }
  const c = need();
  if (!c) return undefined;
  const a = args(c, editor);
  if (!a) return undefined;
  return vscode.window.withProgress(
    { location: vscode.ProgressLocation.Window, title: `DiffuCoder: ${title}` },
    async () => {
      const result = (await c.sendRequest(ExecuteCommandRequest.type, { command, arguments: a })) as
        | CommandResult
        | null;
      if (result && result.holes > 0 && !result.applied) {
        void vscode.window.showWarningMessage(
          `DiffuCoder: ${title} was not applied (the document changed meanwhile, or the model failed; see the output).`,
        );
      }
      return result ?? undefined;
    },
  );
}

async function showStatus(): Promise<void> {
  const s = status;
  let text: string;
  if (!client || client.state === State.Stopped) text = "DiffuCoder: the server is not running.";
  else if (!s) text = "DiffuCoder: the server is starting.";
  else {
    const parts = [`DiffuCoder: ${s.state}`];
    if (s.model) parts.push(`model ${s.model}`);
    if (s.device) parts.push(`on ${s.device}`);
    if (s.lastLatencyMs !== null && s.lastLatencyMs !== undefined)
      parts.push(`last completion ${Math.round(s.lastLatencyMs)} ms`);
    // The server's message repeats model and device when all is well; it explains loading and errors.
    text = parts.join(" · ") + (s.message && s.state !== "ready" && s.state !== "busy" ? ` (${s.message})` : "");
  }
  const pick = await vscode.window.showInformationMessage(text, "Show Output", "Restart Server");
  if (pick === "Show Output") output.show(true);
  if (pick === "Restart Server") await restart();
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("DiffuCoder", { log: true });
  trace = vscode.window.createOutputChannel("DiffuCoder Trace", { log: true });
  statusItem = vscode.window.createStatusBarItem("diffucoder.status", vscode.StatusBarAlignment.Right, 100);
  statusItem.name = "DiffuCoder";
  statusItem.command = "diffucoder.showStatus";
  statusItem.accessibilityInformation = { label: "DiffuCoder starting", role: "button" };
  statusItem.show();
  context.subscriptions.push(output, trace, statusItem);

  context.subscriptions.push(
    vscode.commands.registerCommand("diffucoder.fillAllHoles", () =>
      runServerCommand("fill all holes", FILL_HOLES, (c, editor) => [
        c.code2ProtocolConverter.asUri(editor.document.uri),
      ]),
    ),
    vscode.commands.registerCommand("diffucoder.regenerate", () =>
      runServerCommand("regenerate selection", REGENERATE, (c, editor) => {
        if (editor.selection.isEmpty) {
          void vscode.window.showInformationMessage("DiffuCoder: select the code to regenerate.");
          return undefined;
        }
        return [c.code2ProtocolConverter.asUri(editor.document.uri), c.code2ProtocolConverter.asRange(editor.selection)];
      }),
    ),
    vscode.commands.registerCommand("diffucoder.triggerInline", () => {
      if (!running()) {
        showNote(
          starting()
            ? "$(loading~spin) DiffuCoder: no suggestion yet, the server is starting"
            : "$(circle-slash) DiffuCoder: no suggestion, the server is not running (DiffuCoder: Restart Server)",
        );
        return undefined;
      }
      return vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
    }),
    vscode.commands.registerCommand("diffucoder.restartServer", restart),
    vscode.commands.registerCommand("diffucoder.showStatus", showStatus),
    vscode.commands.registerCommand("diffucoder.showOutput", () => output.show(true)),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) return;
      if (RESTART_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`))) {
        output.info("server settings changed: restarting the server");
        await restart();
      } else if (running() && client) {
        await client.sendNotification(DidChangeConfigurationNotification.type, {
          settings: { [SECTION]: serverSettings(config(), false) },
        });
      }
    }),
    { dispose: () => void stop() },
    { dispose: () => note?.dispose() },
  );
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}
