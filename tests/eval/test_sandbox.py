"""The sandbox: hostile-by-accident programs end, fail, and leave nothing behind; the caller never sees a raise."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from process_probes import gone

from diffucoder_lsp import sandbox
from diffucoder_lsp.sandbox import BOX, SandboxResult, run_many, run_python


def test_ok_program_passes_and_captures_output():
    r = run_python("import sys\nprint('hello')\nprint('warn', file=sys.stderr)")
    assert isinstance(r, SandboxResult)
    assert r.passed and r.returncode == 0 and not r.timed_out
    assert r.stdout_tail == "hello\n"
    assert "warn" in r.stderr_tail
    assert r.reason == "ok"


def test_failing_assertion_is_a_failure_with_its_reason():
    r = run_python("def f():\n    return 1\nassert f() == 2, 'wrong answer'")
    assert not r.passed and r.returncode == 1
    assert r.reason.startswith("AssertionError")
    assert "wrong answer" in r.reason


def test_infinite_loop_is_killed_quickly():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass", timeout_s=1.0)
    elapsed = time.monotonic() - t0
    assert not r.passed and r.timed_out
    assert r.returncode is None
    assert "timeout" in r.reason
    assert elapsed < 3.0


def test_sleeping_forever_is_killed_by_wall_clock_not_cpu_limit():
    r = run_python("import time\ntime.sleep(100)", timeout_s=0.5)
    assert r.timed_out and not r.passed
    assert r.duration_s < 2.5


def test_cpu_limit_stops_a_busy_loop_before_a_long_timeout():
    r = run_python("while True:\n    pass", timeout_s=30.0, cpu_s=1)
    assert not r.passed and not r.timed_out
    assert "SIGXCPU" in r.reason or "SIGKILL" in r.reason
    assert r.duration_s < 10


def test_memory_hog_fails():
    r = run_python("x = bytearray(2 * 1024 ** 3)\nprint('allocated')", memory_mb=256)
    assert not r.passed
    assert "MemoryError" in r.reason
    assert "allocated" not in r.stdout_tail


def test_writes_outside_the_sandbox_are_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    keep = victim / "keep.txt"
    keep.write_text("precious")
    target = tmp_path / "created.txt"
    attempts = {
        "open": f"open({str(target)!r}, 'w').write('x')",
        "append": f"open({str(keep)!r}, 'a').write('x')",
        "pathlib": f"import pathlib; pathlib.Path({str(target)!r}).write_text('x')",
        "os.open": f"import os; os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)",
        "remove": f"import os; os.remove({str(keep)!r})",
        "rmtree": f"import shutil; shutil.rmtree({str(victim)!r})",
        "rename": f"import os; os.rename({str(keep)!r}, 'stolen.txt')",
        "symlink-escape": f"import os; os.symlink({str(victim)!r}, 'link'); open('link/new.txt', 'w')",
        "relative-escape": "import os; os.chdir('/'); open('diffucoder-sbx-escape.txt', 'w')",
    }
    results = run_many(list(attempts.values()), workers=2)
    for name, r in zip(attempts, results, strict=True):
        assert not r.passed, name
        assert "PermissionError" in r.reason and "sandbox" in r.reason, (name, r.reason)
    assert not target.exists()
    assert keep.read_text() == "precious"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert not os.path.exists("/diffucoder-sbx-escape.txt")


def test_writes_inside_the_sandbox_work_and_are_removed_afterwards():
    code = (
        "import os, shutil, tempfile, pathlib\n"
        "os.makedirs('a/b'); open('a/b/x.txt', 'w').write('1'); shutil.rmtree('a')\n"
        "with tempfile.TemporaryDirectory() as d: open(os.path.join(d, 'f'), 'w').write('x')\n"
        "pathlib.Path('out.txt').write_text(open('given.txt').read() * 2)\n"
        "print(os.getcwd()); print(open('out.txt').read())\n"
    )
    r = run_python(code, files={"given.txt": "ab"})
    assert r.passed, r.stderr_tail
    cwd, content = r.stdout_tail.split()
    assert content == "abab"
    if r.isolated:  # the run's folder is mounted at a fixed path; the host's temp folder is removed as before
        assert cwd == BOX
    else:
        assert not os.path.exists(cwd)


def test_orphaned_grandchild_is_killed_with_the_group():
    token = f"orphan-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
        "print(p.pid, flush=True)\n"
    )
    r = run_python(code, timeout_s=5.0)
    assert r.passed, r.stderr_tail
    assert r.duration_s < 4.0  # the orphan holds no pipe that the sandbox waits on
    assert gone(token)


def test_grandchild_of_a_hung_program_is_killed_too():
    token = f"hung-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    r = run_python(code, timeout_s=1.5)
    assert r.timed_out
    assert r.stdout_tail.strip()  # the grandchild was started
    assert gone(token)


def test_environment_carries_no_secret(monkeypatch):
    monkeypatch.setenv("DIFFUCODER_TEST_SECRET", "hunter2-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    r = run_python("import os, json\nprint(json.dumps(dict(os.environ)))")
    assert r.passed
    assert "hunter2-token" not in r.stdout_tail and "also-secret" not in r.stdout_tail
    assert "DIFFUCODER_TEST_SECRET" not in r.stdout_tail
    import json

    env = json.loads(r.stdout_tail)
    assert env["HOME"].startswith(env["TMPDIR"].rsplit("/.tmp", 1)[0])
    assert env["PYTHONHASHSEED"] == "0"


def test_hash_seed_is_fixed_for_reproducible_runs():
    code = "print(hash('diffucoder'))"
    a, b = run_python(code), run_python(code)
    assert a.passed and a.stdout_tail == b.stdout_tail


def test_cannot_kill_the_parent():
    r = run_python("import os, signal\nos.kill(os.getppid(), signal.SIGTERM)")
    assert not r.passed and "PermissionError" in r.reason
    # and we are still here to check it


def test_cwd_copy_runs_against_a_copy_of_a_folder(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("VALUE = 41\n")
    (repo / ".git").mkdir()
    (repo / ".git" / "config").write_text("secret remote")
    code = (
        "import os, pkg\nassert pkg.VALUE == 41\nassert not os.path.exists('.git')\n"
        "open('pkg/__init__.py', 'w').write('VALUE = 0\\n')\n"
    )
    r = run_python(code, cwd_copy=repo)
    assert r.passed, r.stderr_tail
    assert (repo / "pkg" / "__init__.py").read_text() == "VALUE = 41\n"


def test_output_flood_is_bounded():
    r = run_python("while True:\n    print('x' * 1000)", timeout_s=1.0)
    assert not r.passed
    assert len(r.stdout_tail) <= 2000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"code": "print(1)", "files": {"../escape.txt": "x"}},
        {"code": "print(1)", "files": {"/abs.txt": "x"}},
        {"code": "print(1)", "cwd_copy": "/nonexistent/folder/for/sure"},
        {"code": "x = (", "timeout_s": 2.0},
    ],
)
def test_bad_input_is_a_failed_result_never_an_exception(kwargs):
    r = run_python(**kwargs)
    assert isinstance(r, SandboxResult) and not r.passed
    assert r.reason


def test_run_many_keeps_order_and_runs_in_parallel():
    jobs = [f"import time\ntime.sleep(0.6)\nprint({i})" for i in range(4)] + [{"code": "raise SystemExit(3)"}]
    t0 = time.monotonic()
    results = run_many(jobs, workers=4)
    elapsed = time.monotonic() - t0
    assert [r.stdout_tail.strip() for r in results[:4]] == ["0", "1", "2", "3"]
    assert all(r.passed for r in results[:4])
    assert not results[4].passed and results[4].returncode == 3
    assert elapsed < 2.0  # 4 x 0.6 s sequentially would take 2.4 s
    assert run_many([{"code": "print(1)", "no_such_option": 1}])[0].reason.startswith("sandbox error")


def test_runs_are_isolated_here_or_say_why_not():
    r = run_python("print(1)")
    if sandbox.isolation_error():
        assert not r.passed and r.reason.startswith("no sandbox:") and "--unsafe-exec" in r.reason
    else:
        assert r.passed and r.isolated


def test_without_a_sandbox_code_is_refused_unless_unsafe_is_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "_STATE", (None, "bubblewrap (bwrap) not found (test)"))
    r = run_python("print('ran')")
    assert not r.passed and not r.isolated and r.returncode is None and r.stdout_tail == ""
    assert r.reason.startswith("no sandbox: bubblewrap (bwrap) not found (test)")
    assert "--unsafe-exec" in r.reason and "\n" not in r.reason
    r = run_python("print('ran')", allow_unsafe=True)
    assert r.passed and not r.isolated and r.stdout_tail == "ran\n"
    assert [x.reason.startswith("no sandbox") for x in run_many(["print(1)", "print(2)"])] == [True, True]
    assert all(x.passed and not x.isolated for x in run_many(["print(1)", "print(2)"], allow_unsafe=True))


def test_the_unsafe_opt_in_also_comes_from_the_environment(monkeypatch):
    """--unsafe-exec sets DIFFUCODER_UNSAFE_EXEC for the run; without namespaces it is what lets code run."""
    from diffucoder_lsp import sandbox

    monkeypatch.setattr(sandbox, "_isolation", lambda: (None, "namespaces unavailable (test)"))
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    refused = sandbox.run_python("print('hi')", timeout_s=10)
    assert not refused.passed and "--unsafe-exec" in refused.reason
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    ran = sandbox.run_python("print('hi')", timeout_s=10)
    assert ran.passed and not ran.isolated
