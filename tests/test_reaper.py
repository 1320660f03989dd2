"""The watcher that ends what a killed command leaves running (`alpagasus_ray/core/reaper.py`):
only the processes that were under the command, and only once the command has ended."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil

from alpagasus_ray.core.reaper import watch

SESSION = "/tmp/ray-test/session_2026-12-02_01-30-39_818190_1198"
# A stand-in for a command that starts a local Ray: it starts a child that starts a
# grandchild (as the raylet starts its agents), prints their ids, and waits to be killed.
COMMAND = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; g = subprocess.Popen(['sleep', '600']); "
    "print(g.pid, flush=True); time.sleep(600)", "{SESSION}/sockets/raylet"],
    stdout=subprocess.PIPE, text=True)
grandchild = child.stdout.readline().strip()
print(child.pid, grandchild, flush=True)
time.sleep(600)
"""

# The watcher, saying on stderr when its listing first holds the child and the grandchild.
WATCHER = """
import sys
from alpagasus_ray.core import reaper

list_under = reaper._list_under

def listing(root, seen, sessions, core=None):
    was = len(seen)
    list_under(root, seen, sessions, core)
    if was < 2 <= len(seen):
        print("listed", file=sys.stderr, flush=True)

reaper._list_under = listing
print(reaper.watch({pid}, 0, scan_s=0.1, grace_s={grace}))
"""


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for its parent to collect it."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def start_watcher(pid: int, read: int, grace_s: float) -> subprocess.Popen:
    """The watcher of command `pid` on the pipe's read end (closed here), once it has
    listed what runs under the command, however long a loaded machine takes to start it:
    the command is killed only after that."""
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER.format(pid=pid, grace=grace_s)],
        stdin=read, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(read)
    assert watcher.stderr.readline().strip() == "listed", watcher.stderr.read()
    return watcher


def sleeper(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", *args])


def test_a_killed_command_leaves_nothing_it_started_and_nothing_else_is_touched():
    bystander = subprocess.Popen(["sleep", "600"])  # not under the command
    older = sleeper(f"{SESSION}/x")  # names the session, but was running before the command
    time.sleep(0.05)  # start times have a clock tick's resolution
    command = subprocess.Popen([sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, text=True)
    read, write = os.pipe()
    late = None
    try:
        child, grandchild = map(int, command.stdout.readline().split())
        late = sleeper(f"{SESSION}/worker")  # started by the instance between two listings
        watcher = start_watcher(command.pid, read, grace_s=0.5)
        assert watcher.poll() is None  # the pipe is open: the command still runs
        command.send_signal(signal.SIGKILL)  # no clean-up of its own
        command.wait(timeout=300)
        assert watcher.poll() is None  # the write end is still open here: not ended yet
        os.close(write)  # now the pipe closes, as it does when its only holder dies
        write = None
        out, _ = watcher.communicate(timeout=600)
        assert int(out) == 3  # the child and grandchild, orphaned by the kill, and the late one
        # Gone by the time the watcher has ended, however slowly the machine tears them down.
        assert gone(child) and gone(grandchild) and gone(late.pid)
        assert bystander.poll() is None and older.poll() is None
    finally:
        for proc in (command, bystander, older, late):
            if proc is not None:
                proc.kill()
        if write is not None:
            os.close(write)


def test_a_command_already_ended_is_not_watched():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    read, write = os.pipe()
    os.close(write)
    assert watch(int(done.stdout), read, scan_s=0.1, grace_s=0.0) == 0


# A stand-in for a local Ray's start: a "raylet" (a copy of `sleep`, so that its process name
# is Ray's) and an agent that outlives it, as Ray 2.60's dashboard agent does.
RAY_START = """
import subprocess, sys, time
raylet = subprocess.Popen([sys.argv[1], "600"])
agent = subprocess.Popen(["sleep", "600"])
print(raylet.pid, agent.pid, flush=True)
time.sleep(600)
"""


def test_the_grace_ends_once_the_raylet_has(tmp_path):
    """Ray gets up to the grace period to end its processes itself, but none once its
    raylet and GCS server have ended: what runs then (its agents) stays for good, so the
    watcher ends it at once. Here the grace is an hour: the watcher ends within the test's
    time only if the raylet's end ended it."""
    raylet_binary = shutil.copy("/bin/sleep", tmp_path / "raylet")
    command = subprocess.Popen([sys.executable, "-c", RAY_START, str(raylet_binary)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    read, write = os.pipe()
    raylet = agent = None
    try:
        raylet, agent = map(int, command.stdout.readline().split())
        watcher = start_watcher(command.pid, read, grace_s=3600)
        command.send_signal(signal.SIGKILL)
        command.wait(timeout=300)
        os.close(write)  # the command has ended; its raylet still runs: the grace holds
        write = None
        time.sleep(1)
        assert watcher.poll() is None and not gone(agent)
        os.kill(raylet, signal.SIGKILL)  # as a raylet ends with its driver
        out, _ = watcher.communicate(timeout=300)  # not the hour of the grace
        assert int(out) == 1 and gone(agent)  # the agent; the raylet had ended
    finally:
        command.kill()
        for pid in (raylet, agent):
            if pid is not None and not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if write is not None:
            os.close(write)
