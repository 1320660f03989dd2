"""No Ray process outlives the command that started it.

A command that starts a local Ray instance (`ray.init()` with no cluster to join) is the
parent of that instance's processes. At a normal exit `ray.shutdown()` ends them, and when the
command is killed most of them end by themselves; but some do not (Ray 2.60's dashboard and
runtime-env agents log "raylet is dead" and stay). So such a command starts this watcher,
in a session of its own (a terminal's Ctrl-C does not reach it), holding the read end of a
pipe whose write end only the command has: when the pipe closes, the command has ended,
however it ended. The watcher then gives Ray a grace period to end by itself (up to
`GRACE_S`, and no longer than its raylet and GCS server run: what outlives them stays for
good) and ends, by their ids, the processes it saw under the command that are still
running, and nothing else.

    python -m alpagasus_ray.core.reaper PID   (stdin: the pipe from process PID)

A start of a local Ray that failed leaves its processes running too; `end_started` ends
them, in the command's own process, before the start is made again (`core/runtime.py`).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

import psutil

SCAN_S = 0.5  # how often the processes under the command are listed while it runs
GRACE_S = 10.0  # what Ray gets to end its processes itself before the watcher does
# Ray's own processes whose end ends the grace: the rest end with them or not at all.
CORE = ("raylet", "gcs_server")
# How long the watcher waits for what it killed to be gone before it ends itself: a killed
# process takes a moment to be torn down, longer on a loaded machine.
EXIT_WAIT_S = 120.0
# A Ray instance's session folder, named for its start: in its processes' command lines.
SESSION = re.compile(r"[^\s='\"]*/session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+")


def watch(parent: int, pipe: int, scan_s: float = SCAN_S, grace_s: float = GRACE_S) -> int:
    """List the processes under `parent` until `pipe` closes, then end those still running
    after `grace_s`, and return how many it ended once they are gone, so that nothing the
    command started outlives the watcher. A process is known by its id and its start
    time, so an id the system gave to another process since is never touched; one started
    between two listings (a Ray worker) is known by the session folder of the Ray
    instance the command started, in its command line."""
    try:
        root = psutil.Process(parent)
        since = root.create_time()
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, float] = {}
    sessions: set[str] = set()
    core: list[psutil.Process] = []
    while True:
        _list_under(root, seen, sessions, core)
        ready, _, _ = select.select([pipe], [], [], scan_s)
        if ready and not os.read(pipe, 4096):
            break
    _grace(core, grace_s)
    return _end(seen, sessions, since)


def _grace(core: list[psutil.Process], grace_s: float) -> None:
    """Ray's time to end its processes itself: `grace_s`, or less once its raylet and GCS
    server (`core`) have ended, since the rest end with them or not at all (Ray 2.60's
    agents stay): a command's Ctrl-C or kill is then cleaned up in a moment."""
    if core:
        _wait_gone(core, grace_s)
    else:
        time.sleep(grace_s)


def listing() -> dict[int, float]:
    """The processes under this one, by id, with their start times."""
    seen: dict[int, float] = {}
    _list_under(psutil.Process(), seen, set())
    return seen


def end_started(before: dict[int, float], since: float) -> int:
    """End what this process started since its `listing()` was `before` and the clock read
    `since`: the processes under it that were not then, and any started since that names a
    Ray session folder one of them names (an agent whose raylet has exited is no longer under
    this process). For a failed start of a local Ray, which leaves its processes running."""
    seen, sessions = dict(before), set()
    _list_under(psutil.Process(), seen, sessions)
    return _end({pid: t for pid, t in seen.items() if pid not in before}, sessions, since)


def _end(seen: dict[int, float], sessions: set[str], since: float) -> int:
    """Kill the processes in `seen` (id and start time both matching) and those started at or
    after `since` whose command line names one of `sessions`; how many, once they are gone."""
    killed: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline", "create_time", "status"]):
        info = proc.info
        ours = seen.get(proc.pid) == info["create_time"] or (
            (info["create_time"] or 0) >= since
            and any(s in " ".join(info["cmdline"] or []) for s in sessions)
        )
        if ours and proc.pid != os.getpid() and info["status"] != psutil.STATUS_ZOMBIE:
            try:
                proc.kill()
                killed.append(proc)
            except psutil.Error:  # ended already
                continue
    _wait_gone(killed, EXIT_WAIT_S)
    return len(killed)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Until each of `procs` has exited (gone, or a zombie waiting for its parent)."""
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        procs = [p for p in procs if _running(p)]
        time.sleep(0.1)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def _list_under(
    root: psutil.Process,
    seen: dict[int, float],
    sessions: set[str],
    core: list[psutil.Process] | None = None,
) -> None:
    """Add the processes under `root` to `seen`, the Ray sessions they name to `sessions`,
    and those of them that are Ray's raylet or GCS server to `core`."""
    try:
        children = root.children(recursive=True)
    except psutil.Error:  # the command ended while it was being looked at
        return
    for child in children:
        try:
            if child.pid != os.getpid() and child.pid not in seen:
                seen[child.pid] = child.create_time()
                sessions.update(SESSION.findall(" ".join(child.cmdline())))
                if core is not None and child.name() in CORE:
                    core.append(child)
        except psutil.Error:  # ended between the listing and the look
            continue


def start_reaper() -> subprocess.Popen:
    """Start the watcher for this process; the returned handle's stdin is the pipe, and
    must stay open for as long as this process runs (it closes when the process ends)."""
    return subprocess.Popen(
        [sys.executable, "-m", "alpagasus_ray.core.reaper", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.stdin.fileno())
