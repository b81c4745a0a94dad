"""The VS Code extension's manifest against the server: every server setting is contributed under the same name
with the same default and the same allowed values, and nothing the server would reject as unknown is sent to it.
Also the Neovim plugin's help covers every setting. Fast; no editor needed."""

from __future__ import annotations

import dataclasses
import json
import re

from editor_support import NVIM_PLUGIN, VSCODE_EXT

from diffucoder_lsp.server import settings as server_settings
from diffucoder_lsp.server.settings import Settings, known_key, parse_settings

MANIFEST = json.loads((VSCODE_EXT / "package.json").read_text())
PROPS = {k: v for part in MANIFEST["contributes"]["configuration"] for k, v in part["properties"].items()}
CLIENT_ONLY = {
    "server.path",
    "server.pythonPath",
    "server.args",
    "server.env",
    "trace.server",
    "completionItems",
}


def server_props() -> dict[str, dict]:
    return {
        k.removeprefix("diffucoder."): v
        for k, v in PROPS.items()
        if k.removeprefix("diffucoder.") not in CLIENT_ONLY
    }


def test_every_server_setting_is_contributed_with_its_default():
    defaults = Settings().to_json()
    props = server_props()
    assert set(props) == set(defaults), set(props) ^ set(defaults)
    for key, value in defaults.items():
        assert props[key]["default"] == value, key
        assert props[key].get("description") or props[key].get("markdownDescription"), key


def test_client_only_settings_are_unknown_to_the_server():
    # They must never reach the server (it would warn about unknown settings).
    for key in CLIENT_ONLY:
        assert not known_key(key.split(".")[0]), key


def test_choices_and_limits_match_the_server():
    props = server_props()
    assert props["dtype"]["enum"] == list(server_settings.DTYPES)
    assert props["quant"]["enum"] == list(server_settings.QUANTS)
    assert props["alg"]["enum"] == list(server_settings.ALGORITHMS)
    assert props["maxTokens"]["maximum"] == server_settings.MAX_SPAN_TOKENS
    # Each bound the manifest states is the server's: the value at the bound is accepted, one step past it is not.
    for key, prop in props.items():
        for bound, step in (("minimum", -1), ("maximum", 1), ("exclusiveMinimum", 0)):
            if bound not in prop:
                continue
            edge = prop[bound]
            delta = step if prop["type"] in ("integer", ["integer", "null"]) else step * 0.001
            ok_value = edge if bound != "exclusiveMinimum" else edge + 0.001
            bad_value = edge + delta if bound != "exclusiveMinimum" else edge
            _, problems = parse_settings({key: ok_value})
            assert not problems, (key, bound, ok_value, problems)
            _, problems = parse_settings({key: bad_value})
            assert problems, (key, bound, bad_value)


def test_device_pattern_matches_the_servers_check():
    pattern = re.compile(server_props()["device"]["pattern"])
    for value in ("auto", "cpu", "cuda", "cuda:1", "mps", "gpu", "cuda:x", "CPU"):
        _, problems = parse_settings({"device": value})
        # The manifest is stricter on case (the server lowercases); otherwise they agree.
        if value.islower():
            assert bool(pattern.match(value)) == (not problems), value


def test_the_typescript_key_list_is_the_server_one():
    src = (VSCODE_EXT / "src" / "settings.ts").read_text()
    listed = re.search(r"SERVER_KEYS = \[(.*?)\] as const", src, re.S).group(1)
    keys = re.findall(r'"(\w+)"', listed)
    assert keys == [server_settings._camel(f.name) for f in dataclasses.fields(Settings)]


def test_commands_are_contributed_and_do_not_clash_with_server_commands():
    commands = {c["command"] for c in MANIFEST["contributes"]["commands"]}
    assert {
        "diffucoder.fillAllHoles",
        "diffucoder.regenerate",
        "diffucoder.restartServer",
        "diffucoder.showStatus",
    } <= commands
    # vscode-languageclient registers the server's own command ids; ours must differ.
    assert not commands & {"diffucoder.fillHoles", "diffucoder.regenerateSelection"}


def test_nvim_help_documents_every_server_setting():
    help_text = (NVIM_PLUGIN / "doc" / "diffucoder.txt").read_text()
    for key in Settings().to_json():
        assert re.search(rf"^    {key}\s", help_text, re.M), key
