// DiffuCoder for VS Code: starts `diffucoder serve` (stdio) with vscode-languageclient, which turns the server's
// textDocument/inlineCompletion answers into ghost text; adds Fill All Holes / Regenerate Selection (the server's
// workspace/executeCommand commands), a status bar item fed by `diffucoder/status`, and settings that mirror the
// server's, sent as initializationOptions and then as workspace/didChangeConfiguration.
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  RevealOutputChannelOn,
  type ServerOptions,
  State,
} from "vscode-languageclient/node";
import {
  documentSelector,
  RESTART_KEYS,
  serverCommand,
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

let client: LanguageClient | undefined;
let status: Status | undefined;
let statusItem: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
let trace: vscode.LogOutputChannel;

const config = () => vscode.workspace.getConfiguration(SECTION);

function running(): boolean {
  return client !== undefined && client.state === State.Running;
}

function refreshStatusItem(): void {
  const { text, tooltip } = statusText(status, running() || client?.state === State.Starting);
  statusItem.text = text;
  statusItem.tooltip = tooltip;
  const state = !running() && client?.state !== State.Starting ? "stopped" : (status?.state ?? "starting");
  statusItem.accessibilityInformation = { label: `DiffuCoder ${state}`, role: "button" };
  statusItem.backgroundColor =
    status?.state === "error" ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
}

function createClient(): LanguageClient {
  const cfg = config();
  const cmd = serverCommand(cfg);
  const extraEnv = cfg.get<Record<string, string>>("server.env") ?? {};
  const serverOptions: ServerOptions = {
    command: cmd.command,
    args: cmd.args,
    // No `transport`: with TransportKind.stdio the client would append --stdio, which `diffucoder serve` does not
    // take; without it the client still talks over the process's stdin/stdout.
    options: { env: { ...process.env, ...extraEnv } },
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: documentSelector(cfg),
    initializationOptions: serverSettings(cfg, true),
    outputChannel: output,
    traceOutputChannel: trace,
    revealOutputChannelOn: RevealOutputChannelOn.Never,
    middleware: {
      // The same completion also comes as ghost text; the suggest list entry is opt-in.
      provideCompletionItem: (document, position, context, token, next) =>
        config().get<boolean>("completionItems") ? next(document, position, context, token) : undefined,
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
  const c = new LanguageClient("diffucoder", "DiffuCoder", serverOptions, clientOptions);
  c.onNotification("diffucoder/status", (s: Status) => {
    status = s;
    refreshStatusItem();
  });
  c.onDidChangeState(() => {
    if (c.state !== State.Running) status = undefined;
    refreshStatusItem();
  });
  return c;
}

async function start(): Promise<void> {
  client = createClient();
  refreshStatusItem();
  try {
    await client.start();
  } catch (err) {
    refreshStatusItem();
    const cmd = serverCommand(config());
    const pick = await vscode.window.showErrorMessage(
      `DiffuCoder: could not start the server (${cmd.command} ${cmd.args.join(" ")}): ${String(err)}. ` +
        "Install diffucoder-lsp or set diffucoder.server.path / diffucoder.server.pythonPath.",
      "Open Settings",
      "Show Output",
    );
    if (pick === "Open Settings") void vscode.commands.executeCommand("workbench.action.openSettings", "diffucoder.server");
    if (pick === "Show Output") output.show(true);
  }
}

async function stop(): Promise<void> {
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
    vscode.commands.registerCommand("diffucoder.triggerInline", () =>
      vscode.commands.executeCommand("editor.action.inlineSuggest.trigger"),
    ),
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
  );
  await start();
}

export async function deactivate(): Promise<void> {
  await stop();
}
