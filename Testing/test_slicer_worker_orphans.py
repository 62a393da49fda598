"""A worker whose logic died is not left running (POSIX: the parents are killed with SIGKILL).

Each test starts a real parent process (as Slicer would be) that starts the worker through the
public client and waits for it to be ready, then kills the parent and waits for the worker to go.
Three ways the worker learns of it: its stdin reaching end of file (nothing else held the pipe);
a parent watchdog when a forked process still holds the pipe's write end (the worker is
reparented); and the same watchdog when a launcher between the logic and the worker (as Slicer's
``PythonSlicer``) keeps the worker's stdin open itself (the logic's pid, given on the command line).
And what the worker forked goes with it (the orphans found were OpenVINO's telemetry child).
Each pays a worker start (the torch import, seconds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL, fork and /proc are POSIX")

MODULE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "MultiTaskSeg")
HANG_GUARD_S = 20.0  # not a speed requirement: a worker that ignores its parent's death never goes

PARENT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {module_dir!r})
    from MultiTaskSegLib.slicer.worker_client import WorkerProcess

    os.environ.update({worker_env!r})  # the worker's environment, not ours
    worker = WorkerProcess()
    worker.start()
    while worker.ready is None:  # serving: torch imported, reading requests
        worker.poll()
        if not worker.running():
            sys.exit("the worker ended before it was ready: " + worker.log_tail())
        time.sleep(0.05)
    holder = 0
    if {fork_holder!r}:  # a process forked now inherits the write end of the worker's stdin
        holder = os.fork()
        if holder == 0:
            time.sleep(120)
            os._exit(0)
    print(worker.pid, worker.folder, holder, flush=True)
    time.sleep(600)  # until killed
""")

FORKING_SITECUSTOMIZE = textwrap.dedent("""
    # Imported at the worker's start: forks a child that outlives it unless killed, as OpenVINO's
    # telemetry does on `import openvino` (offline, its child never ends by itself).
    import os, time
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    with open(os.environ["FORKED_PID_FILE"], "w") as out:
        out.write(str(child))
""")

LAUNCHER = textwrap.dedent("""
    # Runs the worker as its child on a stdin pipe of its own that it never closes, and waits.
    import subprocess, sys
    child = subprocess.Popen([sys.executable] + sys.argv[1:], stdin=subprocess.PIPE)
    sys.exit(child.wait())
""")


def alive(pid: int) -> bool:
    """Running: a zombie (dead, not yet reaped by whoever adopted it) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def kill_quietly(pid: int) -> None:
    """SIGKILL ``pid`` (a negative one: its process group), if it is still there."""
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def wait_until_gone(pid: int) -> bool:
    deadline = time.monotonic() + HANG_GUARD_S
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def kill_parent_and_wait_for_the_worker(tmp_path, fork_holder: bool = False, env=None, worker_env=None,
                                        forked_pid_file=None):
    """Start a parent, kill it once its worker is serving; the worker's pid, folder, whether (and
    after how many seconds) it went, and whether the process whose pid ``forked_pid_file`` holds
    went too. Whatever is left is killed afterwards, not before it was looked at."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(module_dir=MODULE_DIR, fork_holder=fork_holder, worker_env=worker_env or {}))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    worker_pid = holder = forked = 0
    try:
        line = parent.stdout.readline()  # blocks until the worker is ready (or the parent failed)
        if not line:
            raise AssertionError("the parent did not start its worker: " + parent.stderr.read())
        pid, folder, holder = line.split()
        worker_pid, holder = int(pid), int(holder)
        forked = int(forked_pid_file.read_text()) if forked_pid_file else 0
        assert alive(worker_pid) and os.path.isdir(folder) and (not forked or alive(forked))
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        gone = wait_until_gone(worker_pid)
        seconds = time.monotonic() - killed
        forked_gone = wait_until_gone(forked) if forked else None
        return worker_pid, folder, gone, seconds, forked_gone
    finally:
        kill_quietly(parent.pid)
        if worker_pid:  # a failed test leaves nothing running: the worker leads its own group
            kill_quietly(-worker_pid)
        for pid in (holder, forked):
            if pid:
                kill_quietly(pid)
        parent.stdout.close()
        parent.stderr.close()


def test_a_worker_whose_logic_is_killed_ends_and_removes_its_files(tmp_path):
    worker_pid, folder, gone, seconds, _ = kill_parent_and_wait_for_the_worker(tmp_path)
    assert gone, f"worker {worker_pid} still runs {seconds:.0f} s after its parent was killed"
    assert not os.path.exists(folder), "nobody else is left to remove its folder"


def test_a_worker_ends_when_its_logic_dies_even_if_a_forked_process_holds_its_stdin_open(tmp_path):
    """The forked process keeps the pipe's write end: no end of file ever comes; the watchdog sees
    the worker reparented."""
    worker_pid, folder, gone, seconds, _ = kill_parent_and_wait_for_the_worker(tmp_path, fork_holder=True)
    assert gone, f"worker {worker_pid} still runs {seconds:.0f} s after its parent was killed"
    assert not os.path.exists(folder)


def test_a_worker_behind_a_launcher_that_keeps_its_stdin_open_ends_when_the_logic_dies(tmp_path):
    """The worker's parent is the launcher, alive: only the logic's pid tells the worker it is gone."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    wrapper = tmp_path / "PythonLauncher"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable!s} {launcher!s} \"$@\"\n")
    wrapper.chmod(0o755)
    env = dict(os.environ, MULTITASKSEG_WORKER_PYTHON=str(wrapper))
    worker_pid, folder, gone, seconds, _ = kill_parent_and_wait_for_the_worker(tmp_path, env=env)
    # worker_pid is the launcher's (the client's process); the real worker is its child
    assert gone, f"launcher {worker_pid} (and its worker) still run {seconds:.0f} s after the logic was killed"
    assert not os.path.exists(folder)


def test_what_the_worker_forked_ends_with_it_when_the_logic_dies(tmp_path):
    """The orphans found: OpenVINO's telemetry child (a fork of the worker, so it looks like one)
    outlived a worker that ended on its stdin's end of file with ``os._exit``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FORKING_SITECUSTOMIZE)
    pid_file = tmp_path / "forked.pid"
    worker_env = {"PYTHONPATH": str(site), "FORKED_PID_FILE": str(pid_file)}
    worker_pid, folder, gone, seconds, forked_gone = kill_parent_and_wait_for_the_worker(
        tmp_path, worker_env=worker_env, forked_pid_file=pid_file)
    assert gone, f"worker {worker_pid} still runs {seconds:.0f} s after its parent was killed"
    assert forked_gone, "a process forked by the worker outlived it"
    assert not os.path.exists(folder)
