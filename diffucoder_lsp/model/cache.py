"""Where built model folders live, and how one is built without ever leaving a half-written folder.

Shared by everything that makes a checkpoint folder on first use (the tiny fallback, GGUF conversion, the
fetched base, the bundled model's merge), so each gets the same temp-folder-and-rename guarantee.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import CheckpointError


def cache_root() -> Path:
    """Our cache: $DIFFUCODER_CACHE, else $XDG_CACHE_HOME/diffucoder-lsp, else ~/.cache/diffucoder-lsp."""
    env = os.environ.get("DIFFUCODER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "diffucoder-lsp"


def offline() -> bool:
    """True when the user has asked for no downloads (``DIFFUCODER_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    names = ("DIFFUCODER_OFFLINE", "HF_HUB_OFFLINE")
    return any(os.environ.get(k, "").strip().lower() not in ("", "0", "false", "no") for k in names)


def build_folder_atomically(target: Path, build: Callable[[Path], object]) -> Path:
    """``target`` made by ``build(folder)`` in a temp folder beside it, then renamed into place.

    Two processes building together never see a half-written model, and an interrupted build leaves nothing
    that loads. When another process renamed its copy first, that one is used.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if not (target / "config.json").is_file():
                raise CheckpointError(
                    f"cannot create {target} ({exc}); remove that folder and retry"
                ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (a base of ~100 MB never sits in memory twice)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
