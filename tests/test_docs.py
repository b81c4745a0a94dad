"""The documentation stays true: README.md and docs/*.md are checked against the code they describe.

- docs/server.md's settings table has one row per field of ``Settings``, with its camelCase key, its default as
  ``Settings().to_json()`` gives it, and value ranges the validators really enforce; it names no other setting.
- README.md stays short and keeps the two set-up commands exactly as scripts/test.sh and .ci/run expect.
- Every relative link (and #anchor) in README.md and docs/*.md points at something that exists.
- Every ``diffucoder <subcommand> [<stage>]`` mentioned is a real one, and the ``--options`` written after it in
  the same code span or code block line are options of that subcommand.

Nothing here loads a model or imports torch: the parser is built from ``diffucoder_lsp.cli`` (its command modules
import torch lazily), so the checks themselves take milliseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest

from diffucoder_lsp.cli import build_parser
from diffucoder_lsp.server.settings import VALIDATORS, Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SERVER_MD = DOCS / "server.md"
MARKDOWN = [README, *sorted(DOCS.glob("*.md"))]

SETUP_COMMAND = "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ."
TEST_COMMAND = "bash scripts/test.sh"
README_MAX_LINES = 200


# --- helpers ----------------------------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def shown_default(value) -> str:
    """How a default is written in the table: strings bare, everything else as JSON (null, true, 0.0, ["*"])."""
    return value if isinstance(value, str) else json.dumps(value)


def settings_table(text: str) -> dict[str, list[str]]:
    """camelCase key -> the row's cells, from the table under '## Settings' whose header starts with 'key'."""
    section = text.split("\n## Settings", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    in_table = False
    for line in section.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "key":
            in_table = True
            continue
        if not in_table or set(cells[0]) <= {"-", ":", " "}:
            continue
        key = cells[0].strip("`")
        assert key not in rows, f"docs/server.md lists {key!r} twice"
        rows[key] = cells
    return rows


def _accepts(check, value) -> bool:
    try:
        check(value)
    except ValueError:
        return False
    return True


def code_lines(text: str) -> list[str]:
    """Every line of a fenced code block (a line ending in a backslash joined to the next), and every inline
    code span outside them."""
    out: list[str] = []
    fenced = False
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append(pending + line)
            pending = ""
        else:
            out.extend(re.findall(r"`([^`\n]+)`", line))
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


MENTION = re.compile(r"(?<![\w./-])(?:\S*/)?diffucoder ([a-z][a-z0-9-]*)(?: ([a-z][a-z0-9-]*))?")


def resolve(parser, words: tuple[str, str | None]):
    """(subcommand parser, stage parser or None) for a mention, or an assertion error naming what is wrong."""
    commands = _subparsers(parser)
    cmd, stage = words
    assert cmd in commands, f"'diffucoder {cmd}' is not a subcommand (have: {', '.join(sorted(commands))})"
    sub = commands[cmd]
    stages = _subparsers(sub)
    if stages and stage is not None:
        assert stage in stages, (
            f"'diffucoder {cmd} {stage}': no such stage (have: {', '.join(sorted(stages))})"
        )
        return sub, stages[stage]
    return sub, None


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


# --- (a) docs/server.md against Settings ------------------------------------------------------------------


def test_server_md_has_every_setting_with_its_default():
    rows = settings_table(SERVER_MD.read_text(encoding="utf-8"))
    defaults = Settings().to_json()
    missing = sorted(set(defaults) - set(rows))
    unknown = sorted(set(rows) - set(defaults))
    assert not missing, f"docs/server.md lacks a row for {missing}"
    assert not unknown, f"docs/server.md names settings that do not exist: {unknown}"
    for key, value in defaults.items():
        cell = rows[key][1]
        assert cell == f"`{shown_default(value)}`", f"{key}: docs say {cell}, the code's default is {value!r}"
        assert rows[key][3], f"{key}: no meaning given"


def test_every_setting_has_a_validator():
    names = {f.name for f in dataclasses.fields(Settings)}
    assert names == set(VALIDATORS), (
        "Settings and VALIDATORS disagree: the docs table is checked against both"
    )


INTERVAL = re.compile(r"^(integer|number) in ([\[(])(-?[\d.]+), (-?[\d.]+)([\])])(, or null)?")
CHOICE = re.compile(r"^one of ((?:`[^`]+`(?:, )?)+)$")


def test_server_md_ranges_are_the_validators():
    """Every 'integer in [a, b]', 'number in (a, b]' and 'one of ...' in the values column is what the validator
    enforces: both ends accepted or refused as written, just outside refused, null accepted when said."""
    rows = settings_table(SERVER_MD.read_text(encoding="utf-8"))
    by_camel = {_camel(name): check for name, check in VALIDATORS.items()}
    checked = 0
    for key, cells in rows.items():
        values, check = cells[2], by_camel[key]
        if m := INTERVAL.match(values):
            kind, lo_br, lo, hi, hi_br, nullable = m.groups()
            lo, hi = (int(lo), int(hi)) if kind == "integer" else (float(lo), float(hi))
            step = 1 if kind == "integer" else max(1e-6, abs(hi - lo) * 1e-6)
            assert _accepts(check, lo) == (lo_br == "["), f"{key}: lower end {lo} per docs {values!r}"
            assert _accepts(check, hi) == (hi_br == "]"), f"{key}: upper end {hi} per docs {values!r}"
            assert not _accepts(check, lo - step), f"{key}: accepts below {lo}"
            assert not _accepts(check, hi + step), f"{key}: accepts above {hi}"
            assert _accepts(check, None) == bool(nullable), (
                f"{key}: null {'refused' if nullable else 'accepted'}"
            )
            if kind == "integer" and lo + 1 <= hi:
                assert not _accepts(check, lo + 0.5), f"{key}: accepts a fraction, docs say integer"
            checked += 1
        elif m := CHOICE.match(values):
            options = re.findall(r"`([^`]+)`", m.group(1))
            assert all(_accepts(check, o) for o in options), f"{key}: refuses one of {options}"
            assert not _accepts(check, "no-such-value"), f"{key}: accepts values the docs do not list"
            checked += 1
        elif values == "true or false":
            assert _accepts(check, True) and _accepts(check, False) and not _accepts(check, "true")
            checked += 1
    assert checked >= 20, "most rows should state their values in a checkable form"


# --- (b) README: short, with the two commands -------------------------------------------------------------


def test_readme_is_short_and_keeps_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    setup = [i for i, line in enumerate(lines) if line.startswith(SETUP_COMMAND)]
    test = [i for i, line in enumerate(lines) if line.strip() == TEST_COMMAND]
    assert setup, f"README.md lost the set-up command (a line starting with {SETUP_COMMAND!r})"
    assert test, f"README.md lost the test command line {TEST_COMMAND!r}"
    assert setup[0] < test[0] < 40, "the two commands belong near the top, set-up first"
    assert "| .venv/bin/diffucoder fill -" in lines[setup[0]], "the first command also fills a hole"
    # what CI runs is the README's test command
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert (ROOT / "scripts" / "test.sh").is_file()


# --- (c) links ---------------------------------------------------------------------------------------------


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file."""
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        out.add(slug)
    return out


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(doc: Path):
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.name}: broken links: {broken}"


def test_docs_folder_has_the_promised_pages():
    for name in ("performance", "training", "server", "architecture", "reliability"):
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"


# --- (d) subcommands and their options ---------------------------------------------------------------------


def test_readme_names_only_real_subcommands(parser):
    text = README.read_text(encoding="utf-8")
    mentions = MENTION.findall(text)
    assert len(mentions) >= 10, "the feature tour should name the commands it shows"
    for cmd, stage in mentions:
        resolve(parser, (cmd, stage or None))
    # the tour covers every user-facing command
    named = {cmd for cmd, _ in mentions}
    for cmd in ("fill", "serve", "demo", "analyze", "train", "eval", "bench", "doctor"):
        assert cmd in named, f"README.md does not show 'diffucoder {cmd}'"
    stages = {stage for cmd, stage in mentions if cmd == "train"}
    assert {"sft", "grpo"} <= stages, "README.md shows fine-tuning (train sft) and GRPO (train grpo)"


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_in_code_use_real_options(doc: Path, parser):
    """In code (blocks and inline spans), 'diffucoder CMD [STAGE] ... --opt' uses options CMD [STAGE] has."""
    wrong = []
    for line in code_lines(doc.read_text(encoding="utf-8")):
        for m in MENTION.finditer(line):
            cmd, stage = m.group(1), m.group(2)
            try:
                sub, stage_parser = resolve(parser, (cmd, stage))
            except AssertionError as exc:
                wrong.append(str(exc))
                continue
            target = stage_parser or sub
            rest = re.split(r"&&|\|\||[|;#]", line[m.end() :], maxsplit=1)[0]
            # the next diffucoder mention on the same line starts its own check
            rest = re.split(r"(?:\S*/)?diffucoder ", rest, maxsplit=1)[0]
            options = _options(target)
            for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                if opt not in options:
                    wrong.append(f"'{m.group(0)} ... {opt}' in {line.strip()!r}")
    assert not wrong, f"{doc.name}: {wrong}"
