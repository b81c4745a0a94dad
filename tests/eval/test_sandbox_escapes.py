"""Programs written to escape the sandbox, each measured against the unsafe runner before bubblewrap; none may.

Every case runs through :func:`run_python` with its defaults (isolated by bubblewrap). The Python-level write and
kill guards are bypassed on purpose (``_io``, ``posix``, subprocesses), so what stops them is the boundary: the
mounts, the namespaces, the unprivileged user and the limits of the whole run. Skipped, with the reason, where
bwrap cannot run; never run against the unsafe runner (several of these would hit the caller for real).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from process_probes import gone, running_with

from diffucoder_lsp import sandbox
from diffucoder_lsp.sandbox import run_python


@pytest.fixture(autouse=True)
def _needs_bwrap():
    problem = sandbox.isolation_error()
    if problem:
        pytest.skip(f"bubblewrap cannot isolate runs on this machine: {problem}")


def _token() -> str:
    return "sbxesc" + uuid.uuid4().hex[:12]


def test_found_and_probed():
    assert sandbox.find_bwrap()
    mode, problem = sandbox._isolation()
    assert mode is not None and problem == ""
    r = run_python("print('hi')")
    assert r.passed and r.isolated and r.stdout_tail == "hi\n"


def test_writes_outside_the_box_do_not_land(tmp_path, monkeypatch):
    """_io.open, io.FileIO, posix.open, `touch` and os.system: at the caller's folders, its cwd, the host's /tmp
    and /dev/shm. Inside, those are missing, read-only, or private to the run."""
    monkeypatch.chdir(tmp_path)
    tok = _token()
    targets = {
        "test_dir": str(tmp_path / "outside"),
        "caller_cwd": str(Path.cwd() / "in-cwd"),
        "host_tmp": f"/tmp/{tok}",
        "host_shm": f"/dev/shm/{tok}",
        "etc": f"/etc/{tok}",
        "root": f"/{tok}",
    }
    methods = {
        "_io.open": "import _io; _io.open(T, 'w').write('x')",
        "io.FileIO": "import io; io.FileIO(T, 'w').write(b'x')",
        "posix.open": "import posix; fd = posix.open(T, posix.O_CREAT | posix.O_WRONLY, 0o644); posix.write(fd, b'x')",
        "touch": "import subprocess; subprocess.run(['touch', T], check=True)",
        "os.system": "import os, shlex; assert os.system('echo x > ' + shlex.quote(T)) == 0",
    }
    lines = ["import sys", "results = []"]
    for where, base in targets.items():
        for how, stmt in methods.items():
            t = f"{base}-{how.replace('.', '_')}"
            lines += [
                "try:",
                f"    T = {t!r}",
                f"    {stmt}",
                f"    results.append(('wrote', {where!r}, {how!r}))",
                "except BaseException as e:",
                f"    results.append((type(e).__name__, {where!r}, {how!r}))",
            ]
    lines.append("for r in results: print(*r)")
    r = run_python("\n".join(lines), timeout_s=30.0)
    assert r.passed and r.isolated, r.stderr_tail
    print(r.stdout_tail)
    for where, base in targets.items():
        for how in methods:
            path = f"{base}-{how.replace('.', '_')}"
            assert not os.path.exists(path), (where, how)
    # the only place it may write into /dev/shm is its own tmpfs: the host's shows nothing (checked above)
    assert "wrote host_shm" in r.stdout_tail
    for where in ("test_dir", "caller_cwd", "host_tmp", "etc", "root"):
        assert f"wrote {where}" not in r.stdout_tail, where


def test_the_box_is_the_only_writable_place():
    code = (
        "import posix, os\n"
        "for d in ['/box', '/', '/usr', '/etc', '/dev', '/proc', sys_prefix := __import__('sys').base_prefix]:\n"
        "    try:\n"
        "        fd = posix.open(os.path.join(d, 'w.txt'), posix.O_CREAT | posix.O_WRONLY, 0o644)\n"
        "        print('writable', d)\n"
        "    except OSError as e:\n"
        "        print('refused', d, e.errno)\n"
        "print('uid', os.getuid(), os.geteuid(), os.getgroups())\n"
    )
    r = run_python(code)
    assert r.passed, r.stderr_tail
    assert "writable /box\n" in r.stdout_tail
    assert r.stdout_tail.count("writable") == 1, r.stdout_tail
    uid_line = [ln for ln in r.stdout_tail.splitlines() if ln.startswith("uid")][0]
    assert " 0 " not in uid_line + " " and "[]" in uid_line, uid_line


def test_the_callers_environment_is_not_readable_via_proc(monkeypatch):
    monkeypatch.setenv("DIFFUCODER_ESCAPE_SECRET", "hunter2-escape-token")
    code = (
        "import os, glob\n"
        "print('ppid', os.getppid())\n"
        f"for path in [f'/proc/{{os.getppid()}}/environ', '/proc/{os.getpid()}/environ', '/proc/1/environ']:\n"
        "    try:\n"
        "        print(path, repr(open(path, 'rb').read()))\n"
        "    except OSError as e:\n"
        "        print(path, type(e).__name__)\n"
        "for path in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try:\n"
        "        print(path, repr(open(path, 'rb').read()))\n"
        "    except OSError as e:\n"
        "        print(path, type(e).__name__)\n"
        "print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
    )
    r = run_python(code)
    assert r.passed, r.stderr_tail
    print(r.stdout_tail)
    assert "hunter2-escape-token" not in r.stdout_tail
    assert "DIFFUCODER_ESCAPE_SECRET" not in r.stdout_tail
    pids = eval(r.stdout_tail.split("pids ", 1)[1])
    assert os.getpid() not in pids and len(pids) <= 2  # bwrap's init and the program: nothing of the host


def test_no_network_not_even_the_callers_loopback():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
                accepted.append(conn)
            except TimeoutError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    code = (
        "import socket\n"
        "for host in ['127.0.0.1', 'localhost', '::1']:\n"
        "    try:\n"
        f"        socket.create_connection((host, {port}), timeout=2).sendall(b'escaped')\n"
        "        print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('refused', host, type(e).__name__, e.errno)\n"
    )
    try:
        r = run_python(code, timeout_s=15.0)
    finally:
        th.join()
        listener.close()
    print(r.stdout_tail)
    assert r.passed, r.stderr_tail
    assert "connected" not in r.stdout_tail
    assert not accepted


@pytest.mark.parametrize("how", ["start_new_session", "double_fork_setsid"])
def test_daemons_do_not_outlive_the_run(tmp_path, how):
    tok = _token()
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    marker = marker_dir / "daemon-was-here"
    daemon = (
        "import sys, time\n"
        "time.sleep(2)\n"
        f"open({str(marker)!r}, 'w').write('escaped')\n"
        f"open('/box/late-{tok}', 'w').write('still alive')\n"
    )
    if how == "start_new_session":
        code = (
            "import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', {daemon!r}, {tok!r}], start_new_session=True,\n"
            "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print('spawned', flush=True)\n"
        )
    else:
        code = (
            "import os, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', {daemon!r}, {tok!r}])\n"
            "    os._exit(0)\n"
            "os.wait()\n"
            "print('spawned', flush=True)\n"
        )
    r = run_python(code, timeout_s=10.0)
    assert r.passed and "spawned" in r.stdout_tail, r.stderr_tail
    assert r.duration_s < 2.0  # the run did not wait for the daemon
    assert gone(tok, wait_s=1.0), "a process of the run outlived it"
    time.sleep(2.5)
    assert not marker.exists()
    assert not running_with(tok)


def test_cannot_delete_a_file_in_the_callers_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    code = (
        "import os, posix, subprocess\n"
        "paths = [f'/proc/{os.getppid()}/cwd/victim.txt', "
        f"'/proc/{os.getpid()}/cwd/victim.txt', {str(victim)!r}]\n"
        "for p in paths:\n"
        "    print(p, subprocess.run(['rm', '-f', p], capture_output=True).returncode, flush=True)\n"
        "    try:\n"
        "        posix.unlink(p)\n"
        "    except OSError as e:\n"
        "        print(p, type(e).__name__)\n"
        "subprocess.run(['sh', '-c', 'rm -rf /proc/*/cwd/victim.txt'])\n"
    )
    r = run_python(code, timeout_s=15.0)
    print(r.stdout_tail, r.stderr_tail)
    assert r.isolated
    assert victim.read_text() == "precious"


def test_memory_is_capped_for_the_whole_run_not_per_process():
    """7 processes x 400 MB, each under its own 600 MB limit, against 1 GB for the run: the run is killed."""
    tok = _token()
    hog = "import time; b = b'\\x01' * (400 << 20); time.sleep(60)"
    code = (
        "import subprocess, sys, time\n"
        f"ps = [subprocess.Popen([sys.executable, '-c', {hog!r}, {tok!r}]) for _ in range(7)]\n"
        "for p in ps:\n"
        "    p.wait()\n"
    )
    t0 = time.monotonic()
    r = run_python(code, timeout_s=60.0, memory_mb=600, total_memory_mb=1024)
    elapsed = time.monotonic() - t0
    print(r.reason, f"{elapsed:.1f} s")
    assert not r.passed and not r.timed_out
    assert r.reason.startswith("memory limit"), r.reason
    assert elapsed < 30.0
    assert gone(tok)
    assert psutil.Process().status() != psutil.STATUS_STOPPED


def test_a_fork_bomb_is_capped_and_the_run_ends(tmp_path):
    tok = _token()
    code = (
        "import os, sys, time\n"
        "ok = failed = 0\n"
        "for i in range(512):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        failed += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-S', '-c', 'import time; time.sleep(60)', {tok!r}])\n"
        "    ok += 1\n"
        "print('forked', ok, 'refused', failed, flush=True)\n"
    )
    t0 = time.monotonic()
    r = run_python(code, timeout_s=30.0, total_memory_mb=8192)
    elapsed = time.monotonic() - t0
    print(r.stdout_tail, r.reason, f"{elapsed:.1f} s")
    assert r.isolated and "forked" in r.stdout_tail, r.stderr_tail
    forked = int(r.stdout_tail.split()[1])
    assert forked <= sandbox.DEFAULT_MAX_PROCS
    assert int(r.stdout_tail.split()[3]) >= 512 - sandbox.DEFAULT_MAX_PROCS
    assert elapsed < 30.0
    assert gone(tok)


def test_a_real_fork_bomb_ends_at_the_timeout():
    code = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
    )
    t0 = time.monotonic()
    r = run_python(code, timeout_s=3.0)
    elapsed = time.monotonic() - t0
    print(r.reason, f"{elapsed:.1f} s")
    assert not r.passed
    assert elapsed < 10.0
    assert psutil.Process().status() != psutil.STATUS_STOPPED


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_cannot_signal_the_caller(sig):
    decoy = subprocess.Popen(["sleep", "60"])
    try:
        code = (
            "import os, posix\n"
            f"for pid in [os.getppid(), {decoy.pid}, {os.getpid()}, {os.getppid()}]:\n"
            "    try:\n"
            f"        posix.kill(pid, {int(sig)})\n"
            "        print('sent', pid, flush=True)\n"
            "    except OSError as e:\n"
            "        print('refused', pid, type(e).__name__, flush=True)\n"
        )
        # the test's own host pid and its parent's are only signalled with SIGKILL if the namespace held, since
        # (in another pid namespace) they name no process or one of the run's own
        if sig == signal.SIGSTOP:
            code = code.replace(f", {os.getpid()}, {os.getppid()}]", "]")
        r = run_python(code, timeout_s=10.0)
        print(r.stdout_tail, r.reason)
        assert r.isolated
        time.sleep(0.2)
        assert decoy.poll() is None, "the decoy was killed"
        assert psutil.Process(decoy.pid).status() != psutil.STATUS_STOPPED, "the decoy was stopped"
        assert psutil.Process().status() != psutil.STATUS_STOPPED
    finally:
        decoy.kill()
        decoy.wait()


def test_honest_programs_still_pass(tmp_path):
    solution = (
        "from typing import List\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
        "assert has_close_elements([1.0, 2.0, 3.9, 4.0], 0.3)\n"
        "assert not has_close_elements([1.0, 2.0, 3.0], 0.5)\n"
        "import multiprocessing, subprocess, sys, tempfile, json\n"
        "with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "    assert pool.map(abs, [-1, -2]) == [1, 2]\n"
        "assert subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout == '42\\n'\n"
        "with tempfile.NamedTemporaryFile('w') as f:\n"
        "    f.write('x')\n"
        "import pwd, os; print(pwd.getpwuid(os.getuid()).pw_dir)\n"
    )
    r = run_python(solution, timeout_s=20.0)
    assert r.passed and r.isolated, r.stderr_tail
    assert r.stdout_tail.strip() == sandbox.BOX


def test_overhead_per_run(monkeypatch, capsys):
    """Prints the cost of isolation per trivial run (no timing is asserted: the machine may be busy)."""
    n = 20
    t0 = time.perf_counter()
    iso = [run_python("print(1)") for _ in range(n)]
    t_iso = (time.perf_counter() - t0) / n
    monkeypatch.setattr(sandbox, "_STATE", (None, "disabled to compare"))
    t0 = time.perf_counter()
    unsafe = [run_python("print(1)", allow_unsafe=True) for _ in range(n)]
    t_unsafe = (time.perf_counter() - t0) / n
    assert all(r.passed and r.isolated for r in iso)
    assert all(r.passed and not r.isolated for r in unsafe)
    with capsys.disabled():
        print(
            f"\nsandbox overhead: isolated {t_iso * 1000:.1f} ms/run, unsafe {t_unsafe * 1000:.1f} ms/run, "
            f"difference {(t_iso - t_unsafe) * 1000:+.1f} ms/run ({n} runs each, {sys.executable})"
        )
