// Unit tests of the server log (src/serverlog.ts): stderr parsed for its level, records that also come as
// window/logMessage written once. `npm run test:unit`.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseStderrLine, ServerLog } from "../../src/serverlog.ts";

function sink() {
  const lines: string[] = [];
  const at = (level: string) => (m: string) => lines.push(`[${level}] ${m}`);
  return { lines, channel: { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") } };
}

test("stderr lines keep their level, the server's own records without the logger name", () => {
  assert.deepEqual(parseStderrLine("INFO diffucoder_lsp.server.app: initialize: x", undefined), {
    level: "info",
    text: "initialize: x",
    record: true,
    message: "initialize: x",
    ours: true,
  });
  assert.equal(parseStderrLine("WARNING diffucoder_lsp.server.documents: skipping", undefined).level, "warn");
  assert.equal(parseStderrLine("CRITICAL diffucoder_lsp: boom", undefined).level, "error");
  assert.equal(parseStderrLine("DEBUG diffucoder_lsp.server.app: detail", undefined).level, "debug");
  const other = parseStderrLine("WARNING transformers.modeling_utils: some weights unused", undefined);
  assert.equal(other.text, "transformers.modeling_utils: some weights unused");
  assert.equal(other.ours, false);
  // a line without a prefix continues the record before it; a traceback is an error; Python warnings warn
  assert.equal(parseStderrLine("  more text", "warn").level, "warn");
  assert.equal(parseStderrLine("stray print", undefined).level, "info");
  assert.equal(parseStderrLine("Traceback (most recent call last):", "info").level, "error");
  assert.equal(parseStderrLine("/x/y.py:3: FutureWarning: old", "info").level, "warn");
});

test("no line is shown twice, whichever stream brings it first", () => {
  const { lines, channel } = sink();
  const log = new ServerLog(channel);
  log.stderrLine("INFO diffucoder_lsp.server.transport: starting the stdio server"); // before initialized
  log.stderrLine("INFO diffucoder_lsp.model.loading: loaded m in 0.01s");
  log.logMessage(3, "loaded m in 0.01s"); // the same record over LSP
  log.logMessage(2, "skipping file:///big.py: too large"); // LSP first this time
  log.stderrLine("WARNING diffucoder_lsp.server.documents: skipping file:///big.py: too large");
  log.stderrLine("ERROR diffucoder_lsp.server.engine_client: completing failed: RuntimeError: x");
  log.stderrLine("Traceback (most recent call last):");
  log.stderrLine('  File "a.py", line 1');
  log.logMessage(1, "completing failed: RuntimeError: x");
  assert.deepEqual(lines, [
    "[info] starting the stdio server",
    "[info] loaded m in 0.01s",
    "[warn] skipping file:///big.py: too large",
    "[error] completing failed: RuntimeError: x",
    "[error] Traceback (most recent call last):",
    '[error]   File "a.py", line 1',
  ]);
  assert.ok(!lines.some((l) => l.startsWith("[error] INFO")));
  assert.equal(log.lastError, 'File "a.py", line 1');
});

test("a repeated message is written each time it is logged", () => {
  const { lines, channel } = sink();
  const log = new ServerLog(channel);
  for (let i = 0; i < 2; i++) {
    log.stderrLine("INFO diffucoder_lsp.server.app: no completion for f: too long");
    log.logMessage(3, "no completion for f: too long");
  }
  assert.deepEqual(lines, ["[info] no completion for f: too long", "[info] no completion for f: too long"]);
});

test("a multi-line record from LSP first drops exactly its continuation lines from stderr", () => {
  const { lines, channel } = sink();
  const log = new ServerLog(channel);
  log.logMessage(2, "settings:\n  bad key");
  log.stderrLine("WARNING diffucoder_lsp.server.app: settings:");
  log.stderrLine("  bad key");
  log.stderrLine("a stray print"); // not part of the record: shown
  assert.deepEqual(lines, ["[warn] settings:\n  bad key", "[warn] a stray print"]);
});

test("records of other loggers and debug records never wait for a twin; old ones expire", () => {
  let now = 0;
  const { lines, channel } = sink();
  const log = new ServerLog(channel, () => now, 1000);
  log.stderrLine("WARNING urllib3.connectionpool: retrying");
  log.logMessage(2, "retrying"); // not the same record: a different logger cannot send logMessage
  assert.equal(lines.length, 2);
  log.stderrLine("INFO diffucoder_lsp.server.app: once");
  now = 5000;
  log.logMessage(3, "once"); // long after: a new record, not the twin
  assert.equal(lines.length, 4);
});
