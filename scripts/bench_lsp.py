#!/usr/bin/env python
"""Latency of inline completions over LSP, request to response, as an editor sees it.

Starts ``python -m diffucoder_lsp.server`` (stdio), waits for the model (default: the bundled one), opens real
Python files (from the standard library, deterministic by --seed) with a piece cut out at the cursor, and sends
``textDocument/inlineCompletion`` requests one after another (each at a new position, so the cache never
answers). Half the cursors are mid-line (arguments removed between brackets: a single-line completion), half at
the end of a line whose remainder was removed (a block completion). Prints p50/p95 per kind and overall.

``--typing K`` then types the first K characters of the removed text, one ``didChange`` per keystroke, asking
again after each (kind ``typing``: what cross-request context reuse serves; the typed text is the file's real
text, so the completion cache rarely answers). ``--compare-reuse`` runs everything twice in one invocation,
with ``contextReuse`` on and off, and prints the ratio.

``--invoked``: every request as the editor's manual trigger sends it (``rankInvoked`` applies: ranked lines
with the bundled model), instead of as typing does.

``--pause S``: after opening a file, send a code-action request at the cursor (what VS Code does wherever the
cursor lands) and wait S seconds before the first request: the user reading before typing, time the server
uses to warm the context there (``--no-warm``: setting ``warmContext`` false, for comparison).

``--accept K``: after each first request, accept the suggestion K times in a row (``--read-s`` seconds of
reading each, then the edit an editor makes and a request after it, kind ``accepted``): what speculation serves
(``--no-speculate``: setting ``speculate`` false).

    .venv/bin/python scripts/bench_lsp.py [--model PATH|HUB_ID] [--device cpu] [-n 40] [--json out.json]
    .venv/bin/python scripts/bench_lsp.py -n 20 --typing 4 --compare-reuse
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import sysconfig
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

SOURCES = [
    "textwrap.py",
    "json/decoder.py",
    "json/encoder.py",
    "shlex.py",
    "csv.py",
    "fractions.py",
    "heapq.py",
]
_CALL = re.compile(r"\w\(([^()]{3,60})\)")


def load_sources() -> list[tuple[str, str]]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for rel in SOURCES:
        path = lib / rel
        if path.is_file():
            out.append((path.as_uri(), path.read_text(encoding="utf-8")))
    if not out:
        raise SystemExit("no standard-library sources found to benchmark on")
    return out


def make_cases(sources: list[tuple[str, str]], n: int, seed: int) -> list[dict]:
    """(document text with a piece removed, cursor line/character in UTF-16, kind) for n requests."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        uri, text = rng.choice(sources)
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        line = lines[i]
        if len(cases) % 2 == 0:
            m = _CALL.search(line)
            if not m:
                continue
            lines[i] = line[: m.start(1)] + line[m.end(1) :]
            col, kind, removed = m.start(1), "single-line", m.group(1)
        else:
            body = line.strip()
            if len(body) < 12 or body.startswith("#"):
                continue
            indent = len(line) - len(line.lstrip())
            col = indent + rng.randrange(4, len(body) // 2 + 4)
            lines[i] = line[:col]
            kind, removed = "block", line[col:]
        doc = "\n".join(lines)
        utf16 = len(lines[i][:col].encode("utf-16-le")) // 2
        cases.append(
            {
                "uri": f"{uri}#{len(cases)}",
                "text": doc,
                "line": i,
                "character": utf16,
                "kind": kind,
                "removed": removed,
            }
        )
    return cases


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


TRIGGER = [types.InlineCompletionTriggerKind.Automatic]  # --invoked: what the editor's manual trigger sends


async def request(client, uri: str, line: int, character: int) -> tuple[float, str, bool]:
    """One inlineCompletion at (line, character): (milliseconds, first item's text, empty?)."""
    ms, item = await request_item(client, uri, line, character)
    return ms, (item.insert_text if item is not None else ""), item is None


async def request_item(client, uri: str, line: int, character: int):
    """One inlineCompletion at (line, character): (milliseconds, first item or None)."""
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=TRIGGER[0]),
    )
    t0 = time.perf_counter()
    result = await client.text_document_inline_completion_async(params)
    ms = (time.perf_counter() - t0) * 1000
    items = result.items if result is not None and hasattr(result, "items") else (result or [])
    return ms, (items[0] if items else None)


def open_case(client, case: dict) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=case["uri"], language_id="python", version=1, text=case["text"]
            )
        )
    )


def close_case(client, case: dict) -> None:
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=case["uri"]))
    )


def accept_edit(uri: str, version: int, item) -> types.DidChangeTextDocumentParams:
    """The change an editor sends when a suggestion is accepted: its text over its range."""
    return types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(range=item.range, text=item.insert_text)],
    )


def end_of_insert(start: types.Position, text: str) -> types.Position:
    """Where the cursor lands after inserting ``text`` at ``start`` (UTF-16 columns)."""
    lines = text.split("\n")
    if len(lines) == 1:
        return types.Position(start.line, start.character + len(text.encode("utf-16-le")) // 2)
    return types.Position(start.line + len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2)


async def run(args: argparse.Namespace, reuse: bool = True) -> dict:
    client = LanguageClient("bench-lsp", "1")
    statuses: list[dict] = []

    @client.feature("diffucoder/status")
    def on_status(params):
        statuses.append(params._asdict() if hasattr(params, "_asdict") else dict(params))

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def on_log(params):
        if args.verbose:
            print(f"server log: {params.message}", file=sys.stderr)

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def on_message(params):
        print(f"server: {params.message}", file=sys.stderr)

    options: dict = {"device": args.device, "dtype": args.dtype, "debounceMs": 0, "contextReuse": reuse}
    if args.model:
        options["model"] = args.model
    keys = (
        "tokensPerStep",
        "blockSize",
        "endEarly",
        "warmContext",
        "speculate",
        "maxTokens",
        "maxTokensSingleLine",
        "contextTokens",
        "steps",
    )
    for key in keys:
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    await client.start_io(sys.executable, "-m", "diffucoder_lsp.server")
    start = time.perf_counter()
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(
                general=types.GeneralClientCapabilities(position_encodings=["utf-16"])
            ),
            initialization_options=options,
        )
    )
    client.initialized(types.InitializedParams())
    while not any(s.get("state") in ("ready", "error") for s in statuses):
        await asyncio.sleep(0.05)
    load_s = time.perf_counter() - start
    ready = statuses[-1]
    if ready["state"] == "error":
        raise SystemExit(f"the model did not load: {ready['message']}")

    cases = make_cases(load_sources(), args.n + args.warmup, args.seed)
    results = []
    for i, case in enumerate(cases):
        open_case(client, case)
        if args.pause > 0:
            here = types.Position(line=case["line"], character=case["character"])
            await client.text_document_code_action_async(
                types.CodeActionParams(
                    text_document=types.TextDocumentIdentifier(uri=case["uri"]),
                    range=types.Range(start=here, end=here),
                    context=types.CodeActionContext(diagnostics=[]),
                )
            )
            await asyncio.sleep(args.pause)
        ms, item = await request_item(client, case["uri"], case["line"], case["character"])
        text, empty = (item.insert_text if item is not None else ""), item is None
        timed = i >= args.warmup
        if timed:
            results.append({"kind": case["kind"], "ms": ms, "chars": len(text), "empty": empty})
            if args.verbose:
                print(f"{case['kind']:>11} {ms:8.1f} ms  {text[:60]!r}", file=sys.stderr)
        version = 1
        for _ in range(args.accept):  # the user accepts the suggestion; the editor asks again at once
            if item is None:
                break
            await asyncio.sleep(args.read_s)
            version += 1
            client.text_document_did_change(accept_edit(case["uri"], version, item))
            at = end_of_insert(item.range.start, item.insert_text)
            ms, item = await request_item(client, case["uri"], at.line, at.character)
            if timed:
                got = item.insert_text if item is not None else ""
                results.append({"kind": "accepted", "ms": ms, "chars": len(got), "empty": item is None})
        if args.accept:  # the typing below starts from the file as it was opened
            close_case(client, case)
            open_case(client, case)
        character = case["character"]
        for k, ch in enumerate(case["removed"][: args.typing]):  # the user types on, one key at a time
            pos = types.Position(line=case["line"], character=character)
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=case["uri"], version=k + 2),
                    content_changes=[
                        types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=ch)
                    ],
                )
            )
            character += len(ch.encode("utf-16-le")) // 2
            ms, text, empty = await request(client, case["uri"], case["line"], character)
            if timed:
                results.append({"kind": "typing", "ms": ms, "chars": len(text), "empty": empty})
        close_case(client, case)
    peak_rss_mb = server_peak_rss_mb(client)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()

    summary = {
        "model": ready["model"],
        "device": ready["device"],
        "load_s": round(load_s, 2),
        "requests": len(results),
        "server_peak_rss_mb": peak_rss_mb,
        "options": options,
    }
    for kind in KINDS:
        sel = [r for r in results if kind == "all" or r["kind"] == kind]
        ms = [r["ms"] for r in sel]
        summary[kind] = {
            "n": len(sel),
            "p50_ms": round(percentile(ms, 0.5), 1),
            "p95_ms": round(percentile(ms, 0.95), 1),
            "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
            "non_empty": sum(not r["empty"] for r in sel),
        }
    return summary


KINDS = ("single-line", "block", "typing", "accepted", "all")


def server_peak_rss_mb(client) -> float | None:
    """The server process's resident high-water mark (Linux /proc), for the 500 MB memory target."""
    proc = getattr(client, "_server", None)
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (AttributeError, OSError, ValueError):
        pass
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
    p.add_argument("-n", type=int, default=40, help="timed requests")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens-per-step", dest="tokensPerStep", type=int, default=None)
    p.add_argument("--block-size", dest="blockSize", type=int, default=None, help="0: blocks off")
    p.add_argument(
        "--no-end-early", dest="endEarly", action="store_false", default=None, help="setting endEarly false"
    )
    p.add_argument(
        "--no-warm", dest="warmContext", action="store_false", default=None, help="setting warmContext false"
    )
    p.add_argument("--pause", type=float, default=0.0, help="seconds between opening a file and its request")
    p.add_argument(
        "--accept", type=int, default=0, help="accept this many suggestions in a row after each first request"
    )
    p.add_argument(
        "--read-s", type=float, default=0.5, help="seconds the user reads a suggestion before accepting it"
    )
    p.add_argument(
        "--no-speculate", dest="speculate", action="store_false", default=None, help="setting speculate false"
    )
    p.add_argument("--max-tokens", dest="maxTokens", type=int, default=None)
    p.add_argument("--max-tokens-single-line", dest="maxTokensSingleLine", type=int, default=None)
    p.add_argument("--context-tokens", dest="contextTokens", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument(
        "--invoked",
        action="store_true",
        help="requests as the manual trigger sends them (rankInvoked applies)",
    )
    p.add_argument("--typing", type=int, default=0, help="keystrokes typed after each request (kind typing)")
    p.add_argument("--compare-reuse", action="store_true", help="run with contextReuse on, then off")
    p.add_argument("--json", default=None, help="also write the summary here")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per request on stderr")
    args = p.parse_args()
    if args.invoked:
        TRIGGER[0] = types.InlineCompletionTriggerKind.Invoked
    runs = {"reuse on": asyncio.run(run(args, reuse=True))}
    if args.compare_reuse:
        runs["reuse off"] = asyncio.run(run(args, reuse=False))
    for label, summary in runs.items():
        print(
            f"[contextReuse {label.split()[1]}] model {summary['model']} on {summary['device']} "
            f"(loaded in {summary['load_s']} s), server peak RSS {summary['server_peak_rss_mb']} MB"
        )
        for kind in KINDS:
            s = summary[kind]
            if not s["n"]:
                continue
            print(
                f"{kind:>11}: n={s['n']:3d}  p50 {s['p50_ms']:8.1f} ms  p95 {s['p95_ms']:8.1f} ms  "
                f"mean {s['mean_ms']} ms  non-empty {s['non_empty']}/{s['n']}"
            )
    if args.compare_reuse:
        on, off = runs["reuse on"], runs["reuse off"]
        for kind in KINDS:
            if on[kind]["n"] and off[kind]["n"]:
                print(f"{kind:>11}: p50 reuse off / on = {off[kind]['p50_ms'] / on[kind]['p50_ms']:.2f}x")
    if args.json:
        out = runs if args.compare_reuse else runs["reuse on"]
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
