// The server's log in the "DiffuCoder" output channel, each line once and at its own level.
//
// `diffucoder serve` logs every record to stderr as "LEVEL logger: message" (Python logging), and, once the
// client is initialized, also sends the same records as window/logMessage. The language client's default shows
// every stderr line as an error and every logMessage again. Here stderr lines are parsed for their level, and a
// record that comes both ways is written once, whichever way arrives first.
// No `vscode` import here, so the unit tests run in plain Node.

export type Level = "debug" | "info" | "warn" | "error";

/** The part of a vscode.LogOutputChannel the log writes to. */
export interface LogSink {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

const LEVELS: Record<string, Level> = {
  DEBUG: "debug",
  INFO: "info",
  WARNING: "warn",
  ERROR: "error",
  CRITICAL: "error",
};

// "INFO diffucoder_lsp.server.app: initialize: ..." (the server's format: "%(levelname)s %(name)s: %(message)s")
const RECORD = /^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([A-Za-z_][\w.-]*): (.*)$/;
// "/path/x.py:12: UserWarning: text" (Python's warnings module)
const PY_WARNING = /^\S.*:\d+: [A-Za-z]*Warning: /;
const TRACEBACK = "Traceback (most recent call last):";

export interface StderrLine {
  level: Level;
  text: string;
  /** The line starts a log record (and `message` is its text, to match a window/logMessage). */
  record: boolean;
  message?: string;
  /** The record comes from the server's own logger (the ones it also sends as window/logMessage). */
  ours?: boolean;
}

/** One stderr line; `current` is the level of the record before it (a line without a prefix continues it). */
export function parseStderrLine(line: string, current: Level | undefined): StderrLine {
  const m = RECORD.exec(line);
  if (m) {
    const [, levelName, logger, message] = m;
    const ours = logger === "diffucoder_lsp" || logger.startsWith("diffucoder_lsp.");
    // The logger name adds nothing for the server's own records (window/logMessage shows the message alone).
    return { level: LEVELS[levelName], text: ours ? message : `${logger}: ${message}`, record: true, message, ours };
  }
  if (line.startsWith(TRACEBACK)) {
    return { level: "error", text: line, record: current !== "error" };
  }
  if (PY_WARNING.test(line)) return { level: "warn", text: line, record: true };
  return { level: current ?? "info", text: line, record: false };
}

/** LSP MessageType (1 error, 2 warning, 3 info, 4 log, 5 debug) as a level. */
export function messageTypeLevel(type: number): Level {
  return type === 1 ? "error" : type === 2 ? "warn" : type === 5 ? "debug" : "info";
}

interface Pending {
  key: string;
  at: number;
  /** Continuation lines the stderr copy of this record will bring (a multi-line logMessage). */
  lines: number;
}

/** Writes the server's stderr and window/logMessage to a log channel, each record once. */
export class ServerLog {
  private current: Level | undefined;
  private skipping = 0; // continuation lines of a stderr record already written from window/logMessage
  private fromStderr: Pending[] = [];
  private fromMessages: Pending[] = [];
  /** The last line written at error level (a server that exits while starting says why there). */
  lastError: string | undefined;

  private readonly sink: LogSink;
  private readonly now: () => number;
  private readonly windowMs: number;
  private readonly maxPending: number;

  /** `windowMs`: how long a record waits for its twin from the other stream (they come within milliseconds). */
  constructor(sink: LogSink, now: () => number = Date.now, windowMs = 10_000, maxPending = 200) {
    this.sink = sink;
    this.now = now;
    this.windowMs = windowMs;
    this.maxPending = maxPending;
  }

  private prune(list: Pending[]): void {
    const oldest = this.now() - this.windowMs;
    while (list.length > 0 && (list[0].at < oldest || list.length > this.maxPending)) list.shift();
  }

  private take(list: Pending[], key: string): Pending | undefined {
    this.prune(list);
    const i = list.findIndex((p) => p.key === key);
    return i < 0 ? undefined : list.splice(i, 1)[0];
  }

  private write(level: Level, text: string): void {
    if (level === "error" && text.trim()) this.lastError = text.trim();
    this.sink[level](text);
  }

  /** A line the server wrote to stderr. */
  stderrLine(line: string): void {
    const parsed = parseStderrLine(line, this.current);
    if (!parsed.record && this.skipping > 0) {
      this.skipping--;
      return;
    }
    this.skipping = 0;
    this.current = parsed.level;
    if (parsed.record && parsed.ours && parsed.level !== "debug" && parsed.message !== undefined) {
      const twin = this.take(this.fromMessages, parsed.message);
      if (twin) {
        this.skipping = twin.lines;
        return;
      }
      this.fromStderr.push({ key: parsed.message, at: this.now(), lines: 0 });
      this.prune(this.fromStderr);
    }
    this.write(parsed.level, parsed.text);
  }

  /** A window/logMessage notification. */
  logMessage(type: number, message: string): void {
    const [first, ...rest] = message.split(/\r?\n/);
    if (this.take(this.fromStderr, first)) return; // already written from stderr
    this.fromMessages.push({ key: first, at: this.now(), lines: rest.length });
    this.prune(this.fromMessages);
    this.write(messageTypeLevel(type), message);
  }
}
