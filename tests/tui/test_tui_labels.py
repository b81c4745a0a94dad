"""What the demo says about itself (issue: newcomer stumbles, item 8): every glyph drawn has a legend entry, the
side panel reports the pace actually used, and ``demo --help`` lists the keys."""

from __future__ import annotations

from diffucoder_lsp.cli import _subparsers, build_parser
from diffucoder_lsp.engine.sampler import SamplingOptions
from diffucoder_lsp.tui.render import PLACEHOLDER, STOP_GLYPH
from diffucoder_lsp.tui.runner import DemoSettings
from diffucoder_lsp.tui.widgets import Legend


def test_the_legend_explains_every_glyph_the_code_view_draws():
    text = str(Legend().render())
    assert f"{PLACEHOLDER} masked" in text and f"{STOP_GLYPH} end" in text
    legend = Legend().render()
    struck = [legend.plain[s.start : s.end] for s in legend.spans if getattr(s.style, "strike", False)]
    assert struck == ["struck"] and "struck the editor cuts" in text  # what run_pieces strikes through


def test_the_side_panel_reports_the_pace_actually_used():
    def steps(**kw) -> str:
        return dict(DemoSettings(options=SamplingOptions(**kw)).rows())["steps"]

    assert steps() == "1 token per step"
    assert steps(tokens_per_step=2) == "2 tokens per step"
    assert steps(tokens_per_step=2, threshold=0.9) == "2 tokens per step, or all >= 0.9"
    assert steps(threshold=0.9, block_size=1) == "1 token per step, and the run after it while >= 0.9"
    assert steps(steps=12) == "12"


def test_demo_help_lists_the_keys():
    demo = next(p for p in _subparsers(build_parser()) if p.prog.endswith(" demo"))
    text = demo.format_help()
    for key in ("f fill", "x cancel", "p play", "h heat", "m mark", "s settings", "ctrl+s apply", "q quit"):
        assert key in text
