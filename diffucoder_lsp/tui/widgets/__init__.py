"""The demo's widgets, each with its own DEFAULT_CSS: code view, legend, replay scrubber, side panel."""

from .bars import Legend, Scrubber
from .code_view import CodeView, mark_lines
from .side_panel import PanelState, SidePanel

__all__ = ["CodeView", "Legend", "PanelState", "Scrubber", "SidePanel", "mark_lines"]
