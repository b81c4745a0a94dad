"""The run record behind replay: steps in order, views at any step, AR-ness of what is visible."""

from __future__ import annotations

import pytest
import torch

from diffucoder_lsp.engine.infill import InfillCanvas
from diffucoder_lsp.engine.sampler import StepEvent
from diffucoder_lsp.tui.history import FillHistory, StepRecord


def canvas(width: int = 4) -> InfillCanvas:
    ids = [0, *([99] * width), 0]
    return InfillCanvas(
        ids=ids,
        hole_spans=[(1, 1 + width)],
        auto=[False],
        kept_prefix="",
        kept_suffix="",
        segments=["a", "b"],
    )


def record(step: int, positions, tokens=None, total: int = 4, elapsed: float = 0.0) -> StepRecord:
    tokens = tokens or [7] * len(positions)
    return StepRecord(
        step, total, tuple(positions), tuple(tokens), tuple([-0.5] * len(positions)), 0, elapsed
    )


def test_record_from_event_keeps_row_zero_in_host_lists():
    event = StepEvent(
        step=2,
        total_steps=5,
        rows=torch.tensor([0, 0]),
        cols=torch.tensor([3, 1]),
        tokens=torch.tensor([11, 12]),
        confidence=torch.tensor([-0.25, -1.0]),
        remaining=3,
    )
    rec = StepRecord.from_event(event, elapsed=1.5)
    assert (rec.step, rec.total_steps, rec.positions, rec.tokens, rec.remaining) == (
        2,
        5,
        (3, 1),
        (11, 12),
        3,
    )
    assert rec.confidences == pytest.approx((-0.25, -1.0))
    empty = StepEvent(
        step=0,
        total_steps=1,
        rows=torch.tensor([], dtype=torch.long),
        cols=torch.tensor([], dtype=torch.long),
        tokens=torch.tensor([]),
        confidence=torch.tensor([]),
    )
    assert StepRecord.from_event(empty, 0.0).positions == ()


def test_views_show_exactly_the_steps_applied():
    h = FillHistory(canvas())
    for step, pos in enumerate([3, 1, 4, 2]):  # hole offsets 2, 0, 3, 1
        h.apply(record(step, [pos], [10 + step], elapsed=0.5 * (step + 1)))
    assert h.steps_done == 4 and h.hole_tokens == 4
    tokens_at = lambda v: [t.token for t in h.holes_at(v)[0]]  # noqa: E731
    assert tokens_at(0) == [None] * 4
    assert tokens_at(1) == [None, None, 10, None]
    assert tokens_at(2) == [11, None, 10, None]
    assert tokens_at(4) == [11, 13, 10, 12]
    assert tokens_at(99) == tokens_at(4)  # clamped
    assert h.revealed_at(3) == 3 and h.tokens_per_step(2) == 1.0 and h.tokens_per_step(0) is None
    assert h.elapsed_at(2) == 1.0
    # order C A D B on offsets: global@1 hits on reveals 2 and 4 only; never local
    assert h.ar_ness(4, 1) == (0.0, 0.5)
    assert h.ar_ness(2, 1) == (0.0, 0.5)
    assert h.ar_ness(0, 1) == (None, None)


def test_steps_must_arrive_in_order_and_reveal_once():
    h = FillHistory(canvas())
    with pytest.raises(ValueError):
        h.apply(record(1, [1]))
    h.apply(record(0, [1]))
    with pytest.raises(ValueError):
        h.apply(record(1, [1]))


def test_finish_sets_status_and_total():
    h = FillHistory(canvas())
    h.apply(record(0, [1, 2], total=8, elapsed=0.3))
    h.finish("cancelled", 0.4)
    assert (h.status, h.total_steps, h.elapsed_at(1)) == ("cancelled", 8, 0.4)
    h2 = FillHistory(canvas())
    h2.apply(record(0, [1, 2, 3, 4], total=8))
    h2.finish("done", 1.0)
    assert h2.total_steps == 1  # ended early: the planned total is no longer the truth


def test_control_characters_never_reach_the_terminal():
    from diffucoder_lsp.tui.render import Piece, document_lines, visible

    assert visible("a\x1b[2Jb\x02\r\n\tc\x9b") == "a␛[2Jb␂ \n\tc\ufffd"
    lines = document_lines([Piece("x = "), Piece("\x1b[31mred", masked=False), Piece("\n")], "python")
    assert lines[0].plain == "x = ␛[31mred"
    assert all(ord(ch) >= 0x20 for line in lines for ch in line.plain)


TEXTS = {1: "a", 2: ", b", 3: "\n", 4: "return", 5: "⌀"}


def _done(tokens: list[int]) -> FillHistory:
    h = FillHistory(canvas(len(tokens)))
    h.apply(record(0, list(range(1, 1 + len(tokens))), tokens, total=1))
    h.finish("done")
    return h


def test_cut_at_keeps_the_positions_that_spell_what_the_editor_shows():
    h = _done([1, 2, 3, 4, 5, 5])
    h.cut_at(["a, b"], TEXTS.get)
    assert h.kept == [2]  # "a" ", b" kept; the newline, "return" and the ends are past the cut
    h.cut_at(["a, b\nreturn⌀⌀"], TEXTS.get)
    assert h.kept == [6]  # all of it
    h.cut_at([None], TEXTS.get)
    assert h.kept == [None]
    h.cut_at(["    a, b"], TEXTS.get)  # the cut re-indented the line: not a prefix of what was written
    assert h.kept == [None]


def test_run_pieces_strike_what_is_cut_and_show_a_run_of_ends_once():
    from rich.style import Style

    from diffucoder_lsp.tui.render import run_pieces

    h = _done([1, 2, 3, 4, 5, 5])
    plain = run_pieces(h, 1, "step", TEXTS.get, "entropy")
    assert "".join(p.text for p in plain) == "aa, b\nreturn⌀b"  # two end tokens, one glyph
    assert not any(p.style and p.style.strike for p in plain)
    h.cut_at(["a, b"], TEXTS.get)
    pieces = run_pieces(h, 1, "step", TEXTS.get, "entropy")
    struck = [p.text for p in pieces if isinstance(p.style, Style) and p.style.strike]
    assert struck == ["\n", "return"]
