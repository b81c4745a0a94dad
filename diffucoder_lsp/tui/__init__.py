"""The terminal demo (Textual): watch a diffusion model fill code, in the order it actually decodes.

Layout: :mod:`.app` (thin App) -> :mod:`.screens` (the demo screen and the settings dialog) -> :mod:`.widgets`
(code view, legend, replay bar, side panel). A run is drained on a worker thread by :mod:`.fill`, recorded by
:mod:`.history` and drawn by :mod:`.render`; :mod:`.runner` is the only part that touches the engine.
Importing this package needs the ``tui`` extra (textual).
"""

from .app import DemoApp
from .runner import DemoSettings, EngineRunner, FillRunner, RemoteRunner, RunnerInfo

__all__ = ["DemoApp", "DemoSettings", "EngineRunner", "FillRunner", "RemoteRunner", "RunnerInfo"]
