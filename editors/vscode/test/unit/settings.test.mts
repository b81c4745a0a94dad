// Unit tests of the extension's pure parts (Node >= 23 runs TypeScript directly): `npm run test:unit`.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  documentSelector,
  isNoSuggestionMessage,
  noSuggestionText,
  SERVER_KEYS,
  serverSettings,
  statusText,
} from "../../src/settings.ts";

const reader = (values: Record<string, unknown>) => ({ get: <T>(key: string) => values[key] as T | undefined });

test("initial settings leave unset (null) values to the server; changes send every key", () => {
  const values: Record<string, unknown> = Object.fromEntries(SERVER_KEYS.map((k) => [k, 1]));
  values.model = null;
  values.steps = null;
  values["server.path"] = "/x/diffucoder"; // client-only: never sent
  const initial = serverSettings(reader(values), true);
  assert.ok(!("model" in initial) && !("steps" in initial) && !("server.path" in initial));
  assert.equal(Object.keys(initial).length, SERVER_KEYS.length - 2);
  const change = serverSettings(reader(values), false);
  assert.equal(change.model, null);
  assert.deepEqual(Object.keys(change).sort(), [...SERVER_KEYS].sort());
});

test("an empty model path means the bundled model", () => {
  assert.equal(serverSettings(reader({ model: "  " }), false).model, null);
  assert.ok(!("model" in serverSettings(reader({ model: "" }), true)));
  assert.equal(serverSettings(reader({ model: "/ckpt" }), true).model, "/ckpt");
});

test("document selector follows enabledLanguages", () => {
  assert.deepEqual(documentSelector(reader({ enabledLanguages: ["*"] })).map((s) => s.language), [undefined, undefined, undefined]);
  const sel = documentSelector(reader({ enabledLanguages: ["python", "lua"] }));
  assert.equal(sel.length, 6);
  assert.deepEqual([...new Set(sel.map((s) => s.language))], ["python", "lua"]);
});

test("status bar text per state", () => {
  assert.match(statusText(undefined, false).text, /circle-slash/);
  assert.match(statusText(undefined, true).text, /loading~spin/);
  assert.equal(statusText({ state: "ready", lastLatencyMs: 41.6 }, true).text, "$(sparkle) DiffuCoder 42 ms");
  assert.equal(statusText({ state: "loading" }, true).text, "$(loading~spin) DiffuCoder loading");
  const err = statusText({ state: "error", message: "no such checkpoint", model: "/m" }, true);
  assert.equal(err.text, "$(error) DiffuCoder error");
  assert.match(err.tooltip, /no such checkpoint/);
  assert.match(err.tooltip, /model: \/m/);
  // the ready message repeats model and device: the tooltip says them once
  const ready = statusText({ state: "ready", model: "default", device: "cpu", message: "default on cpu" }, true);
  assert.doesNotMatch(ready.tooltip, /default on cpu/);
  assert.match(ready.tooltip, /model: default/);
});

test("an explicit request that brings nothing says why in one short line", () => {
  assert.equal(noSuggestionText({ state: "ready" }), "$(circle-slash) DiffuCoder: no suggestion");
  assert.equal(noSuggestionText(undefined), "$(circle-slash) DiffuCoder: no suggestion");
  // the server's own explanation (a completion withheld by minConfidence) wins
  const withheld = "DiffuCoder: no suggestion, below the confidence threshold: mean 0.412 < minConfidence 0.500";
  assert.equal(
    noSuggestionText({ state: "ready" }, withheld),
    "$(circle-slash) DiffuCoder: no suggestion, below the confidence threshold",
  );
  assert.match(noSuggestionText({ state: "loading" }), /the model is loading/);
  assert.match(noSuggestionText({ state: "error" }), /not loaded/);
  assert.ok(isNoSuggestionMessage(withheld));
  assert.ok(!isNoSuggestionMessage("DiffuCoder: no <|mask|> holes in this document"));
  assert.ok(!isNoSuggestionMessage("DiffuCoder: no suggestions were harmed"));
});
