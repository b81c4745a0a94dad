"""Finding a sandbox run's processes from the host, for the sandbox tests: by a unique token in the command line,
not by pid (inside the sandbox's pid namespace a process's pid is not the host's)."""

from __future__ import annotations

import time

import psutil


def running_with(token: str) -> list[int]:
    """Host pids of live (not zombie) processes whose command line contains ``token``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and token in " ".join(p.info["cmdline"] or []):
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def gone(token: str, wait_s: float = 3.0) -> bool:
    """True once no process whose command line carries ``token`` runs any more (zombies nobody reaped count as
    gone)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not running_with(token):
            return True
        time.sleep(0.05)
    return False
