"""The DiffuCoder language server (pygls): inline completions, completions, and diffusion-only fill commands.

Modules, one concern each: :mod:`.documents` (text and position encodings), :mod:`.context` (what the model
sees), :mod:`.postprocess` (what the editor inserts), :mod:`.cache`, :mod:`.scheduler` (the model thread),
:mod:`.engine_client` (the model's lifecycle and the one engine call), :mod:`.settings`, :mod:`.app` (handlers)
and :mod:`.actions` (commands and code actions). Nothing here imports torch; the engine does, lazily.
"""

from __future__ import annotations

__all__ = ["build_server"]


def build_server(*args, **kwargs):
    from .app import build_server as _build

    return _build(*args, **kwargs)
