// The server's settings as VS Code stores them, and what the extension sends to `diffucoder serve`.
// No `vscode` import here, so the unit tests run in plain Node.

/** Every setting the server reads (camelCase, the `diffucoder` section); mirrors server/settings.py. */
export const SERVER_KEYS = [
  "model",
  "backendToken",
  "device",
  "dtype",
  "quant",
  "steps",
  "tokensPerStep",
  "temperature",
  "topP",
  "alg",
  "eosPenalty",
  "seed",
  "threshold",
  "entropyBound",
  "blockSize",
  "endEarly",
  "contextCache",
  "cacheRefreshEvery",
  "contextReuse",
  "warmContext",
  "speculate",
  "maxTokens",
  "maxTokensSingleLine",
  "rankLines",
  "rankInvoked",
  "minConfidence",
  "contextTokens",
  "prefixShare",
  "debounceMs",
  "enabledLanguages",
  "maxDocumentChars",
  "cacheSize",
] as const;

export type ServerKey = (typeof SERVER_KEYS)[number];

/** Settings whose change needs a new server process (the rest go over didChangeConfiguration). */
export const RESTART_KEYS = ["server.path", "server.pythonPath", "server.args", "server.env", "enabledLanguages"];

/** The part of `getConfiguration('diffucoder')` the extension needs: a `get`. */
export interface ConfigReader {
  get<T>(key: string): T | undefined;
}

/**
 * The server's settings object. `initial`: for initializationOptions, where an unset (null) value is left out
 * so that the server keeps its own default (or its command-line `--model`); on a change every key is sent, since
 * the server merges a change into its current settings and a removed value must go back to the default.
 */
export function serverSettings(config: ConfigReader, initial: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    let value = config.get<unknown>(key);
    if (typeof value === "string" && value.trim() === "" && (key === "model" || key === "backendToken")) value = null;
    if (value === undefined || (value === null && initial)) continue;
    out[key] = value;
  }
  return out;
}

/** Document selector entries for `enabledLanguages` (`*`: every file and untitled document). */
export function documentSelector(config: ConfigReader): { scheme: string; language?: string }[] {
  const langs = config.get<string[]>("enabledLanguages") ?? ["*"];
  const schemes = ["file", "untitled", "vscode-remote"];
  if (langs.length === 0 || langs.includes("*")) return schemes.map((scheme) => ({ scheme }));
  return langs.flatMap((language) => schemes.map((scheme) => ({ scheme, language })));
}

/** What the server reports in `diffucoder/status`. */
export interface Status {
  state: "loading" | "ready" | "busy" | "error" | string;
  model?: string;
  device?: string;
  lastLatencyMs?: number | null;
  message?: string;
}

/** Status bar text (with codicons) and tooltip for a status; `running` false: the server is not running. */
export function statusText(status: Status | undefined, running: boolean): { text: string; tooltip: string } {
  if (!running) return { text: "$(circle-slash) DiffuCoder", tooltip: "DiffuCoder: the server is not running" };
  if (!status) return { text: "$(loading~spin) DiffuCoder", tooltip: "DiffuCoder: starting the server" };
  const icon: Record<string, string> = {
    loading: "$(loading~spin)",
    ready: "$(sparkle)",
    busy: "$(sync~spin)",
    error: "$(error)",
  };
  const latency =
    status.lastLatencyMs === null || status.lastLatencyMs === undefined
      ? ""
      : ` ${Math.round(status.lastLatencyMs)} ms`;
  const text = `${icon[status.state] ?? "$(question)"} DiffuCoder${status.state === "ready" || status.state === "busy" ? latency : ` ${status.state}`}`;
  const lines = [
    `DiffuCoder: ${status.state}`,
    status.model ? `model: ${status.model}` : "",
    status.device ? `device: ${status.device}` : "",
    latency ? `last completion:${latency}` : "",
    // the ready message is "MODEL on DEVICE", already shown above: only a message that adds something
    status.message && status.message !== `${status.model} on ${status.device}` ? status.message : "",
  ].filter((l) => l);
  return { text, tooltip: lines.join("\n") };
}

/**
 * The short status-bar message for an inline suggestion asked for by hand (Alt+\) that brought nothing.
 * `serverMessage`: what the server said about this request ("DiffuCoder: no suggestion, REASON: DETAIL", a
 * completion it withheld below the confidence threshold), without its detail (the numbers go to the log: the
 * status bar cuts long text); otherwise the model's state explains it, or there was simply nothing to suggest.
 */
export function noSuggestionText(status: Status | undefined, serverMessage?: string): string {
  if (serverMessage) return `$(circle-slash) ${serverMessage.split(": ").slice(0, 2).join(": ")}`;
  if (status?.state === "loading") return "$(loading~spin) DiffuCoder: no suggestion yet, the model is loading";
  if (status?.state === "error") return "$(error) DiffuCoder: no suggestion, the model is not loaded (see DiffuCoder: Show Status)";
  return "$(circle-slash) DiffuCoder: no suggestion";
}

/** The server's window/showMessage that explains an empty answer to a request made by hand (server/app.py). */
export function isNoSuggestionMessage(message: string): boolean {
  return /^DiffuCoder: no suggestion\b/.test(message);
}
