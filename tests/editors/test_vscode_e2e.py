"""The VS Code extension (editors/vscode), packaged as a .vsix, in a real VS Code workbench: code-server serves
VS Code, headless Chromium (playwright-core, editors/vscode/test/e2e/drive.mjs) drives it, and the extension runs
the real server on a tiny checkpoint (DC_E2E_MODEL=<path|default> picks another model). Two code-servers: one
where the server is set (completions, commands, settings, the output channel, an empty Alt+\\), and one with no
server setting and none on PATH, to see how the extension finds the server or says that it cannot.

Marked ``vscode`` and opt-in: it needs Node 24, code-server and Chromium, which ``scripts/vscode-e2e.sh`` installs
(~2 min, ~0.9 GB) before running ``pytest -m vscode`` with DC_VSCODE_REQUIRED=1 (missing tools are then a failure).
A plain ``pytest`` run skips it; DC_VSCODE_E2E=1 runs it there too when the tools are installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from editor_support import VSCODE_EXT, isolated_env

pytestmark = [pytest.mark.e2e, pytest.mark.vscode]

TOOLS = Path(os.environ.get("DC_VSCODE_TOOLS", VSCODE_EXT / ".tools"))
VSIX = Path(os.environ.get("DC_VSCODE_VSIX", VSCODE_EXT / "diffucoder.vsix"))
CHROMIUM = os.environ.get("DC_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
NODE = TOOLS / "bin" / "node"
CODE_SERVER = TOOLS / "code-server" / "node_modules" / ".bin" / "code-server"
DRIVER = VSCODE_EXT / "test" / "e2e" / "drive.mjs"

SOURCE = 'import os\n\n\ndef greet(name):\n    greeting = "hello " + name\n    return greeting\n\n'
HOLES = "def add(a, b):\n    return <|mask|>\n\n\ndef mul(a, b):\n    <|mask|>\n"


def _missing() -> list[str]:
    need = {
        "Node 24": NODE,
        "code-server": CODE_SERVER,
        "the packaged extension": VSIX,
        "playwright-core": VSCODE_EXT / "node_modules" / "playwright-core",
        "Chromium": Path(CHROMIUM),
    }
    return [f"{name} ({path})" for name, path in need.items() if not Path(path).exists()]


@pytest.fixture(scope="module")
def tools():
    required = os.environ.get("DC_VSCODE_REQUIRED") == "1"
    if not required and os.environ.get("DC_VSCODE_E2E") != "1":
        pytest.skip("VS Code e2e is opt-in: scripts/vscode-e2e.sh (or DC_VSCODE_E2E=1)")
    missing = _missing()
    if missing:
        msg = "VS Code e2e tools missing: " + ", ".join(missing) + "; run scripts/vscode-e2e.sh"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"code-server exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"code-server did not come up: {log.read_text()[-3000:]}")


def trace_text(user_data: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(user_data.rglob("*DiffuCoder Trace*.log")))


def trace_responses(user_data: Path) -> list[dict]:
    """inlineCompletion results in the extension's protocol trace (its "DiffuCoder Trace" log channel)."""
    results = []
    for path in sorted(user_data.rglob("*DiffuCoder Trace*.log")):
        text = path.read_text(errors="replace")
        for m in re.finditer(
            r"Received response 'textDocument/inlineCompletion[^\n]*\n(?:Result: )?(\{.*?\n\})", text, re.S
        ):
            try:
                results.append(json.loads(m.group(1)))
            except json.JSONDecodeError:
                pass
    return results


def words(text: str) -> str:
    return "".join(re.findall(r"[A-Za-z0-9_]", text))


BASE_SETTINGS = {
    "diffucoder.device": "cpu",
    "diffucoder.trace.server": "verbose",
    "workbench.startupEditor": "none",
    "editor.inlineSuggest.enabled": True,
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "chat.disableAIFeatures": True,  # no chat panel in the screenshots
    "workbench.secondarySideBar.defaultVisibility": "hidden",
}


@contextlib.contextmanager
def code_server(tmp: Path, settings: dict, path: str | None = None):
    """code-server with the packaged extension installed and ``settings`` as its user and machine settings, in a
    home of its own under ``tmp``; ``path``: the PATH it (and so the extension host) gets. Yields the URL's base
    and the environment for the driver."""
    home = tmp / "home"
    env = isolated_env(home, TMPDIR=str(tmp / "tmp"))
    Path(env["TMPDIR"]).mkdir()
    env["PATH"] = f"{TOOLS / 'bin'}{os.pathsep}{env['PATH'] if path is None else path}"
    config, user_data, extensions = tmp / "config.yaml", tmp / "user-data", tmp / "extensions"
    config.write_text("auth: none\ncert: false\n")
    base = [
        str(CODE_SERVER),
        "--config",
        str(config),
        "--user-data-dir",
        str(user_data),
        "--extensions-dir",
        str(extensions),
    ]
    inst = subprocess.run(
        [*base, "--install-extension", str(VSIX)], env=env, capture_output=True, text=True, timeout=180
    )
    assert inst.returncode == 0 and "diffucoder" in (inst.stdout + inst.stderr).lower(), (
        inst.stdout + inst.stderr
    )
    installed = [p.name for p in extensions.iterdir() if p.name.startswith("diffucoder.diffucoder")]
    assert installed, f"the extension was not installed: {list(extensions.iterdir())}"
    # User settings; the machine-scoped server.* ones also in the remote (code-server side) machine settings.
    for scope in ("User", "Machine"):
        (user_data / scope).mkdir(parents=True, exist_ok=True)
        (user_data / scope / "settings.json").write_text(json.dumps(settings, indent=2))

    port = free_port()
    log = tmp / "code-server.log"
    with open(log, "w") as logf:
        server = subprocess.Popen(
            [
                *base,
                "--auth",
                "none",
                "--bind-addr",
                f"127.0.0.1:{port}",
                "--disable-telemetry",
                "--disable-update-check",
                "--disable-workspace-trust",
                "--disable-getting-started-override",
                "--log",
                "trace",
            ],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_healthy(port, server, log)
        denv = dict(
            env,
            DC_PROFILE=str(tmp / "chromium"),
            DC_CHROMIUM=CHROMIUM,
            DC_USER_DATA=str(user_data),
            NODE_PATH=str(VSCODE_EXT / "node_modules"),
        )
        yield f"http://127.0.0.1:{port}/", denv
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
        keep = os.environ.get("DC_VSCODE_ARTIFACTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(log, Path(keep) / f"code-server-{tmp.name}.log")


def drive(denv: dict, out: Path, artifacts: str = "") -> dict:
    """Run the driver; its report (asserting that it wrote one). ``artifacts``: the subfolder of
    DC_VSCODE_ARTIFACTS its screenshots and report go to."""
    out.mkdir()
    drive = subprocess.run(
        [str(NODE), str(DRIVER)],
        env=dict(denv, DC_OUT=str(out)),
        cwd=VSCODE_EXT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    report_path = out / "report.json"
    assert report_path.exists(), f"driver wrote no report (rc {drive.returncode}): {drive.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    report["_stderr"] = drive.stderr[-2000:]
    keep = os.environ.get("DC_VSCODE_ARTIFACTS")
    if keep:  # copy screenshots and logs somewhere to look at
        shutil.copytree(out, Path(keep) / artifacts, dirs_exist_ok=True)
    return report


def output_log(user_data: Path) -> str:
    """The extension's "DiffuCoder" output channel as written to disk (every window of the run, in order)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(user_data.rglob("DiffuCoder.log")))


def check_ok(report: dict, user_data: Path) -> None:
    if not report.get("ok"):
        steps = [s["name"] for s in report["steps"]]
        raise AssertionError(
            f"{report.get('error')}\nsteps: {steps}\nstderr: {report['_stderr']}\n"
            f"DiffuCoder log: {output_log(user_data)[-3000:]}"
        )


@pytest.fixture(scope="module")
def run(tools, tmp_path_factory, tiny_ckpt):
    tmp = tmp_path_factory.mktemp("vscode")
    t0 = time.monotonic()
    model = os.environ.get("DC_E2E_MODEL") or str(tiny_ckpt)
    settings = dict(
        BASE_SETTINGS, **{"diffucoder.server.path": str(Path(sys.executable).parent / "diffucoder")}
    )
    if model != "default":
        settings["diffucoder.model"] = model
    workspace = tmp / "workspace"
    workspace.mkdir()
    (workspace / "main.py").write_text(SOURCE)
    (workspace / "holes.py").write_text(HOLES)
    with code_server(tmp, settings) as (url, denv):
        report = drive(
            dict(denv, DC_URL=f"{url}?folder={workspace}", DC_WORKSPACE=str(workspace)), tmp / "out"
        )
    user_data = Path(denv["DC_USER_DATA"])
    report["_elapsed_s"] = round(time.monotonic() - t0, 1)
    check_ok(report, user_data)
    return {
        "report": report,
        "out": tmp / "out",
        "workspace": workspace,
        "user_data": user_data,
        "model": model,
    }


def path_without_diffucoder() -> str:
    """PATH less every folder with a ``diffucoder`` in it (the test's own virtual environment, for one)."""
    return os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "diffucoder").exists()
    )


@pytest.fixture(scope="module")
def discovery(tools, tmp_path_factory, tiny_ckpt):
    """No server setting and no ``diffucoder`` on PATH: three workspaces, opened one after the other in the same
    code-server. ``venv``: the server is in the workspace's .venv (a link to this project's). ``broken``: the
    workspace's .venv has a ``diffucoder`` that fails at once. ``none``: there is no server anywhere."""
    tmp = tmp_path_factory.mktemp("vscode-discovery")
    settings = dict(BASE_SETTINGS, **{"diffucoder.model": str(tiny_ckpt)})
    spaces = {}
    for name in ("venv", "broken", "none"):
        ws = spaces[name] = tmp / f"ws-{name}"
        ws.mkdir()
        (ws / "main.py").write_text(SOURCE)
    (spaces["venv"] / ".venv" / "bin").mkdir(parents=True)
    (spaces["venv"] / ".venv" / "bin" / "diffucoder").symlink_to(Path(sys.executable).parent / "diffucoder")
    broken = spaces["broken"] / ".venv" / "bin" / "diffucoder"
    broken.parent.mkdir(parents=True)
    broken.write_text('#!/bin/sh\necho "ERROR diffucoder: broken install (test)" >&2\nexit 1\n')
    broken.chmod(0o755)
    with code_server(tmp, settings, path=path_without_diffucoder()) as (url, denv):
        workspaces = [{"name": n, "url": f"{url}?folder={ws}"} for n, ws in spaces.items()]
        report = drive(
            dict(denv, DC_SCENARIO="discovery", DC_WORKSPACES=json.dumps(workspaces)),
            tmp / "out",
            "discovery",
        )
    user_data = Path(denv["DC_USER_DATA"])
    check_ok(report, user_data)
    return {"report": report, "user_data": user_data, "spaces": spaces}


def test_ghost_text_from_our_server_and_tab_accepts_it(run):
    report = run["report"]
    # the first line of a suggestion is drawn inline (ghost-text-decoration); the lines after it come first in
    # the page as a view zone (ghost-text): put them back in reading order
    first = [g for g in report["ghost"] if "ghost-text-decoration" in g["cls"]]
    rest = [g for g in report["ghost"] if "ghost-text-decoration" not in g["cls"]]
    ghost = "".join(g["text"] for g in first) + "\n" + "".join(g["text"] for g in rest)
    assert words(ghost) or ghost.strip(), "ghost text is rendered in the editor"
    responses = [r for r in trace_responses(run["user_data"]) if r.get("items")]
    assert responses, "the extension received inline completions from the server (trace)"
    served = [r["items"][0]["insertText"] for r in responses]
    # What the editor shows is one of the server's answers (compared on letters and digits: the rest of a noise
    # model's text renders as spaces or symbols).
    assert any(words(s).startswith(words(ghost)[:20]) for s in served), (ghost, served)
    assert (run["out"] / "ghost.png").stat().st_size > 10_000

    # Tab put the suggestion into the file at the cursor (the end of the typed "total = ").
    lines = report["accepted_saved"].split("\n")
    assert lines[:7] == SOURCE.split("\n")[:7]
    tail = "\n".join(lines[7:])
    assert tail.startswith("total = ") and len(tail.rstrip()) > len("total = ")
    accepted = tail[len("total = ") :]
    assert any(accepted.rstrip() == s.rstrip() or words(accepted) == words(s) for s in served), (
        accepted,
        served,
    )


def test_accept_word_takes_part_of_the_suggestion(run):
    before = run["report"]["accepted_saved"]
    after = run["report"]["word_saved"]
    assert after.startswith(before.rstrip("\n")), "the earlier text is unchanged"
    added = after[len(before.rstrip("\n")) :]
    assert added.startswith("\nvalue = ")
    piece = added[len("\nvalue = ") :].rstrip("\n")
    served = [r["items"][0]["insertText"] for r in trace_responses(run["user_data"]) if r.get("items")]
    assert piece, "Ctrl+Right accepted something"
    assert any(s.startswith(piece) and len(piece) < len(s.rstrip()) for s in served), (piece, served)


def test_status_bar_and_show_status(run):
    report = run["report"]
    assert "DiffuCoder" in report["statusbar_ready"]
    assert re.search(r"DiffuCoder \d+ ms", report["statusbar_after"]), report["statusbar_after"]
    toast = report["status_toast"]
    assert "DiffuCoder: ready" in toast and "last completion" in toast and "cpu" in toast
    if run["model"] != "default":
        assert run["model"] in toast


def test_settings_change_reaches_the_server_and_restart_starts_a_new_one(run):
    trace = trace_text(run["user_data"])
    changes = re.findall(
        r"Sending notification 'workspace/didChangeConfiguration'.*?\nParams: (\{.*?\n\})", trace, re.S
    )
    sent = [json.loads(c)["settings"]["diffucoder"] for c in changes]
    assert any(s.get("maxTokens") == 40 for s in sent), sent
    # Only the server's own keys are sent (no server.* or trace.*: the server would call them unknown).
    assert all(not ({"server", "trace", "completionItems"} & set(s)) for s in sent)
    inits = re.findall(r"Sending request 'initialize.*?\nParams: (\{.*?\n\})", trace, re.S)
    assert len(inits) >= 2, "Restart Server started a second server"
    options = json.loads(inits[0])["initializationOptions"]
    assert options["device"] == "cpu" and "server" not in options
    if run["model"] != "default":
        assert options["model"] == run["model"]
    assert json.loads(inits[-1])["initializationOptions"]["maxTokens"] == 40  # the new server starts with it


def test_fill_all_holes_changes_the_file(run):
    holes = run["report"]["holes"]
    text = holes["saved"]  # the file as saved right after Fill All Holes
    assert "<|mask|>" in holes["before"] and "<|mask|>" not in holes["after"]
    assert "<|mask|>" not in text and text != HOLES
    lines = text.split("\n")
    # Only the holes changed: the code around them is where it was.
    assert lines[0] == "def add(a, b):" and lines[1].startswith("    return ")
    assert "def mul(a, b):" in lines
    assert (run["out"] / "filled.png").stat().st_size > 10_000


def test_regenerate_selection_rewrites_the_first_line(run):
    before = run["report"]["holes"]["saved"]
    after = run["report"]["regenerate"]["saved"]
    assert after != before
    first, rest = before.split("\n", 1)
    # The selected first line was replaced; everything after it is untouched.
    assert after.endswith("\n" + rest) and not after.startswith(first + "\n" + rest)
    assert (run["workspace"] / "holes.py").read_text() == after


def log_entries(user_data: Path) -> list[tuple[str, str]]:
    """(level, first line) of each entry of the DiffuCoder output channel."""
    return re.findall(r"^\d{4}-\d\d-\d\d [\d:.]+ \[(\w+)\] (.*)$", output_log(user_data), re.M)


def test_output_channel_shows_each_server_log_line_once_at_its_level(run):
    entries = log_entries(run["user_data"])
    assert entries, "the DiffuCoder output channel was written"
    # No stderr line is shown raw as an error ("[error] INFO diffucoder_lsp...: ..." before)
    raw = [(level, m) for level, m in entries if re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ", m)]
    assert not raw, raw[:5]
    starts = [level for level, m in entries if m == "starting the stdio server"]
    assert starts and set(starts) == {"info"}, starts
    assert len(starts) >= 2, "Restart Server started a second server"
    # The model's load is logged after `initialized`, so the server sends it both on stderr and as
    # window/logMessage: each server shows it once, at info.
    loaded = [level for level, m in entries if m.startswith("loaded ")]
    assert loaded == ["info"] * len(starts), loaded
    inits = [level for level, m in entries if m.startswith("initialize: position encoding")]
    assert inits == ["info"] * len(starts), inits
    # Where the server came from is said once per start.
    used = [m for level, m in entries if m.startswith("starting the server: ")]
    assert len(used) == len(starts) and all(m.endswith("(found in diffucoder.server.path)") for m in used), (
        used
    )


def test_an_explicit_request_that_brings_nothing_says_so(run):
    explicit = run["report"]["explicit"]
    # Withheld by the confidence gate: the server's reason, as a status-bar message and not as a toast.
    assert explicit["withheld"], "no status-bar message after Alt+\\ with minConfidence 1"
    assert explicit["withheld"].endswith("DiffuCoder: no suggestion, below the confidence threshold"), (
        explicit
    )
    # its detail (the score against minConfidence 1) in the output channel
    detail = [m for _, m in log_entries(run["user_data"]) if m.startswith("DiffuCoder: no suggestion, below")]
    assert detail and "minConfidence 1" in detail[0], detail
    assert not [t for t in explicit["withheld_toasts"] if "no suggestion" in t], explicit["withheld_toasts"]
    # Nothing to suggest (the file is over maxDocumentChars): plainly "no suggestion".
    assert explicit["empty"], "no status-bar message after Alt+\\ with nothing to suggest"
    assert explicit["empty"].endswith("DiffuCoder: no suggestion"), explicit
    assert not [t for t in explicit["empty_toasts"] if "no suggestion" in t], explicit["empty_toasts"]
    # The requests were the editor's manual trigger (LSP InlineCompletionTriggerKind.Invoked = 1).
    trace = trace_text(run["user_data"])
    assert re.search(r"'textDocument/inlineCompletion.*?\"triggerKind\": 1", trace, re.S)


def test_server_in_the_workspace_venv_is_found_without_settings(discovery):
    got = discovery["report"]["workspaces"]["venv"]
    assert got["status"] == "DiffuCoder ready", got
    assert got["notifications"] == [], got["notifications"]
    exe = discovery["spaces"]["venv"] / ".venv" / "bin" / "diffucoder"
    used = [m for _, m in log_entries(discovery["user_data"]) if m.startswith("starting the server: ")]
    assert f"starting the server: {exe} serve (found in the workspace's .venv)" in used, used


def test_a_server_that_fails_to_start_gives_one_error(discovery):
    got = discovery["report"]["workspaces"]["broken"]
    assert got["status"] == "DiffuCoder stopped", got
    mine = got["notifications"]
    # One: none of the language client's own ("couldn't create connection to server", "write EPIPE", ...)
    assert len(mine) == 1, mine
    assert "did not start" in mine[0] and "broken install (test)" in mine[0], mine
    # Its stderr is in the output channel once, as an error (it is not restarted in a loop).
    errors = [m for level, m in log_entries(discovery["user_data"]) if "broken install (test)" in m]
    assert errors == ["diffucoder: broken install (test)"], errors


def test_no_server_anywhere_gives_one_error_that_says_where_it_looked(discovery):
    got = discovery["report"]["workspaces"]["none"]
    assert got["status"] == "DiffuCoder stopped", got
    mine = got["notifications"]
    assert len(mine) == 1, mine
    assert "no language server found" in mine[0] and "pip install diffucoder-lsp" in mine[0], mine
    assert "diffucoder.server.path" in mine[0], mine
    looked = [m for _, m in log_entries(discovery["user_data"]) if m.startswith("looked for the server: ")]
    ws = discovery["spaces"]["none"]
    assert any(str(ws / ".venv" / "bin" / "diffucoder") in m for m in looked), looked
    assert any(".local/bin/diffucoder" in m for m in looked), looked
