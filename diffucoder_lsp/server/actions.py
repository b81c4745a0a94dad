"""Diffusion-only features: fill every ``<|mask|>`` hole of a file jointly, and regenerate a selection.

Both run as ``workspace/executeCommand`` commands (``diffucoder.fillHoles`` with ``[uri]``,
``diffucoder.regenerateSelection`` with ``[uri, range]``), are offered as code actions, and apply their result
with ``workspace/applyEdit`` (a versioned ``TextDocumentEdit`` when the client supports document changes, so an
edit computed for an old version is refused by the client instead of corrupting the file). A command answers
``{applied, holes}``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from ..errors import BadInputError, short_repr
from .background import warm_later
from .context import defuse_special_tokens
from .engine_client import MARKER
from .postprocess import postprocess
from .scheduler import Cancelled
from .settings import MAX_SPAN_TOKENS

if TYPE_CHECKING:
    from .host import ServerHost

log = logging.getLogger(__name__)

FILL_HOLES = "diffucoder.fillHoles"
REGENERATE = "diffucoder.regenerateSelection"


def _uri_arg(args: tuple) -> str:
    if not args or not isinstance(args[0], str):
        raise JsonRpcInvalidParams.of(ValueError("expected the document URI as the first argument"))
    return args[0]


def _uinteger(value: Any) -> int:
    """An LSP uinteger: an int (or an integral float, as some clients send) in [0, 2^31 - 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError("not an integer")
    if not 0 <= value <= 2**31 - 1:
        raise ValueError("out of range")
    return int(value)


def _range_arg(value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        start, end = value["start"], value["end"]
        a = (_uinteger(start["line"]), _uinteger(start["character"]))
        b = (_uinteger(end["line"]), _uinteger(end["character"]))
    except (TypeError, KeyError, ValueError, IndexError):
        shown = short_repr(value, 80)
        raise JsonRpcInvalidParams.of(
            ValueError(f"expected an LSP range (non-negative integer lines and characters), got {shown}")
        ) from None
    return (a, b) if a <= b else (b, a)


def reindent(new: str, selected: str) -> str:
    """``new`` (what replaces ``selected``, a selection from a line start) at the selection's indentation: its
    first line takes the selected first line's indentation and every later line moves by the same amount, so a
    12-space line does not come back at 4 spaces and the block keeps its shape."""
    want = selected[: len(selected) - len(selected.lstrip(" \t"))]
    have = new[: len(new) - len(new.lstrip(" \t"))]
    if want == have or not new.strip():
        return new
    lines = new.split("\n")
    out = [want + lines[0][len(have) :]]
    for line in lines[1:]:
        if not line.strip():
            out.append(line)
        elif line.startswith(have):
            out.append(want + line[len(have) :])
        else:  # less indented than the first line: keep its position relative to the block's start
            out.append(line)
    return "\n".join(out)


def clean_hole(fill: str, after: str) -> str:
    """A hole's text as it goes into the file: no trailing blank lines before a line end."""
    if not after or after[0] in "\r\n":
        return fill.rstrip()
    return fill.rstrip("\r\n")


def _edit(ls: ServerHost, uri: str, version: int | None, edits: list[types.TextEdit]) -> types.WorkspaceEdit:
    if ls.client_supports("workspace.workspace_edit.document_changes"):
        doc_id = types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version)
        return types.WorkspaceEdit(
            document_changes=[types.TextDocumentEdit(text_document=doc_id, edits=edits)]
        )
    return types.WorkspaceEdit(changes={uri: edits})


async def _run_infill(ls: ServerHost, uri: str, doc, text: str, lengths: list[int], label: str):
    """Fill ``text`` on the model thread (cancelled when the document changes); None when it did not finish."""
    s = ls.settings
    engine = ls.engine
    window = s.context_tokens + sum(lengths) + 64

    def work(should_stop):
        return engine.infill(text, lengths, settings=s, should_stop=should_stop, window=window)

    try:
        # long: completions in other files run between this fill's steps instead of waiting for all of it
        return await ls.scheduler.run(
            work, key=uri, is_current=ls.is_current(uri, doc, doc.version), label=label, long=True
        )
    except Cancelled as exc:
        log.info("%s for %s stopped: %s", label, uri, exc.reason)
    except BadInputError as exc:
        ls.show(types.MessageType.Warning, f"DiffuCoder: {exc}")
    except Exception as exc:
        engine.report_once(exc, label)
    return None


def _usable(ls: ServerHost, uri: str):
    doc = ls.documents.get(uri)
    if doc is None:
        raise JsonRpcInvalidParams.of(ValueError(f"document is not open: {uri}"))
    if ls.documents.should_skip(doc, ls.settings.max_document_chars) is not None:
        ls.show(types.MessageType.Info, "DiffuCoder: this document is too large or binary")
        return None
    if not ls.engine.ready:
        ls.show(types.MessageType.Info, f"DiffuCoder: the model is not ready ({ls.engine.state})")
        return None
    return doc


async def fill_holes(ls: ServerHost, uri: str) -> dict[str, Any]:
    doc = _usable(ls, uri)
    if doc is None:
        return {"applied": False, "holes": 0}
    text, version = doc.text, doc.version
    starts = []
    at = text.find(MARKER)
    while at >= 0:
        starts.append(at)
        at = text.find(MARKER, at + len(MARKER))
    if not starts:
        ls.show(types.MessageType.Info, f"DiffuCoder: no {MARKER} holes in this document")
        return {"applied": False, "holes": 0}
    fill = await _run_infill(ls, uri, doc, text, [ls.settings.max_tokens] * len(starts), "filling holes")
    if fill is None or ls.documents.get(uri) is not doc or doc.version != version:
        return {"applied": False, "holes": len(starts)}
    edits = []
    for start, hole in zip(starts, fill.texts, strict=True):
        end = start + len(MARKER)
        # as an inline completion at the hole would be shown: the block's indentation, its scope, no copy of
        # the line after it, no doubled closers
        edit = postprocess(hole, text[:start], text[end:])
        new_text, replace = ("", 0) if edit is None else (edit.text, edit.replace)
        rng = types.Range(
            start=ls.offset_to_position(doc, start), end=ls.offset_to_position(doc, end + replace)
        )
        edits.append(
            types.TextEdit(range=rng, new_text=clean_hole(new_text, text[end + replace : end + replace + 1]))
        )
    result = await ls.workspace_apply_edit_async(
        types.ApplyWorkspaceEditParams(edit=_edit(ls, uri, version, edits), label="DiffuCoder: fill holes")
    )
    return {"applied": bool(result and result.applied), "holes": len(starts)}


async def regenerate_selection(ls: ServerHost, uri: str, rng: Any) -> dict[str, Any]:
    (l0, c0), (l1, c1) = _range_arg(rng)
    doc = _usable(ls, uri)
    if doc is None:
        return {"applied": False, "holes": 0}
    text, version = doc.text, doc.version
    a = doc.offset_at(l0, c0, ls.encoding)
    b = doc.offset_at(l1, c1, ls.encoding)
    if a == b:
        ls.show(types.MessageType.Info, "DiffuCoder: select the code to regenerate")
        return {"applied": False, "holes": 0}
    selected = text[a:b]
    at_line_start = a == 0 or text[a - 1] == "\n"
    try:
        n = ls.engine.count_tokens(selected)
    except Cancelled:  # the model is being replaced
        ls.show(types.MessageType.Info, f"DiffuCoder: the model is not ready ({ls.engine.state})")
        return {"applied": False, "holes": 0}
    span = max(4, min(MAX_SPAN_TOKENS, math.ceil(n * 1.25) + 4))
    masked = defuse_special_tokens(text[:a]) + MARKER + defuse_special_tokens(text[b:])
    fill = await _run_infill(ls, uri, doc, masked, [span], "regenerating the selection")
    if fill is None or ls.documents.get(uri) is not doc or doc.version != version:
        return {"applied": False, "holes": 1}
    new = fill.texts[0]
    line_end = text.find("\n", b)
    code_follows = text[b : len(text) if line_end < 0 else line_end].strip() != ""
    if "\n" not in selected and code_follows:
        new = new.split("\n", 1)[0].rstrip("\r")  # a piece of one line stays on that line
    elif selected.endswith("\n") and not new.endswith("\n"):
        new += "\n"
    elif not selected.endswith("\n"):
        new = new.rstrip("\r\n")
    if at_line_start:
        new = reindent(new, selected)
    edit_range = types.Range(start=ls.offset_to_position(doc, a), end=ls.offset_to_position(doc, b))
    result = await ls.workspace_apply_edit_async(
        types.ApplyWorkspaceEditParams(
            edit=_edit(ls, uri, version, [types.TextEdit(range=edit_range, new_text=new)]),
            label="DiffuCoder: regenerate selection",
        )
    )
    return {"applied": bool(result and result.applied), "holes": 1}


def note_cursor(ls: ServerHost, doc, position: types.Position) -> None:
    """Editors ask for code actions wherever the cursor lands (VS Code does, for its light bulb): the only word
    the server gets of a cursor that moved without an edit. The context there is warmed while the user pauses."""
    offset = ls.position_to_offset(doc, position)
    if offset != doc.cursor:
        doc.cursor = offset
        warm_later(ls, doc.uri)


def code_actions(ls: ServerHost, params: types.CodeActionParams):
    doc = ls.documents.get(params.text_document.uri)
    if doc is None or not ls.settings.language_enabled(doc.language_id):
        return None
    note_cursor(ls, doc, params.range.end)
    uri = params.text_document.uri
    commands = []
    if MARKER in doc.text:
        commands.append(
            types.Command(title=f"DiffuCoder: fill all {MARKER} holes", command=FILL_HOLES, arguments=[uri])
        )
    r = params.range
    if (r.start.line, r.start.character) != (r.end.line, r.end.character):
        rng = {
            "start": {"line": r.start.line, "character": r.start.character},
            "end": {"line": r.end.line, "character": r.end.character},
        }
        commands.append(
            types.Command(title="DiffuCoder: regenerate selection", command=REGENERATE, arguments=[uri, rng])
        )
    if not ls.client_supports("text_document.code_action.code_action_literal_support"):
        return commands or None
    return [
        types.CodeAction(title=c.title, kind=types.CodeActionKind.RefactorRewrite, command=c)
        for c in commands
    ] or None


def register_actions(server: ServerHost) -> None:
    @server.command(FILL_HOLES)
    async def cmd_fill_holes(ls, *args):
        return await fill_holes(ls, _uri_arg(args))

    @server.command(REGENERATE)
    async def cmd_regenerate(ls, *args):
        if len(args) < 2:
            raise JsonRpcInvalidParams.of(ValueError("expected [uri, range]"))
        return await regenerate_selection(ls, _uri_arg(args), args[1])

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.RefactorRewrite]),
    )
    def code_action(ls: ServerHost, params: types.CodeActionParams):
        return code_actions(ls, params)
