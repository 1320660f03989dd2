"""Who is writing an output right now: a run keeps `heartbeat.json` at the output's root
fresh while it runs (local or S3) and removes it when it ends, so that a second command on
the same output is refused at its start, naming the live run, instead of finding the first
one's files half way and telling the user to overwrite them.

A run whose owner is gone is taken over, with a line saying whose: on the same host, when
its process no longer exists (a killed command, a lost driver); from another host, when its
heartbeat is older than `STALE_S`, far longer than any pause of a loaded machine. The
heartbeat's time is the writer's clock: hosts that share an output are assumed to keep
their clocks within a minute of each other (NTP).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import fsspec
import psutil

from alpagasus_ray.data.io import HEARTBEAT, is_local, join, read_json, write_json

BEAT_S = 15.0  # how often a live run says so
STALE_S = 300.0  # silence after which a run on another host is taken to be gone

log = logging.getLogger(__name__)


class OutputInUse(RuntimeError):
    """Another run is writing this output now."""


def this_process() -> dict[str, Any]:
    """The identity a heartbeat carries: a process id alone may be reused."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": psutil.Process(pid).create_time(),
    }


def why_gone(beat: dict[str, Any], now: float) -> str | None:
    """Why the run that wrote `beat` is over, or None while it is live."""
    if beat.get("host") == socket.gethostname():
        try:
            started = psutil.Process(int(beat["pid"])).create_time()
        except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
            return "its process has ended"
        if started != beat.get("pid_started"):
            return "its process has ended"
    try:
        silent = now - float(beat.get("beat_at", 0))
    except (TypeError, ValueError):
        return "its heartbeat holds no time"
    return f"no heartbeat for {silent:.0f} s" if silent > STALE_S else None


def describe(beat: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(beat.get("started_at", 0)))
    return f"run {beat.get('id')} on {beat.get('host')} pid {beat.get('pid')}, started {started}"


def check_not_in_use(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> None:
    """Refuse, naming it, a run that is writing the output now; say whose run is taken over
    when its owner is gone."""
    try:
        beat = read_json(fs, join(root, HEARTBEAT))
    except (FileNotFoundError, NotADirectoryError):  # no run, or no folder: said elsewhere
        return
    except ValueError:  # written whole by a run, so edited by hand: it names no live run
        log.warning("%s: %s cannot be read; taking the output over", uri, HEARTBEAT)
        return
    if not isinstance(beat, dict):
        log.warning("%s: %s names no run; taking the output over", uri, HEARTBEAT)
        return
    now = time.time()
    gone = why_gone(beat, now)
    if gone is None:
        heard = max(0.0, now - float(beat["beat_at"]))
        raise OutputInUse(
            f"another run is writing {uri}: {describe(beat)}, last heard {heard:.0f} s ago; "
            "wait for it to end, or stop it, then run this command again"
        )
    log.warning("%s: taking over from %s: %s", uri, describe(beat), gone)


class Heartbeat:
    """While the `with` block runs, `heartbeat.json` at the output's root says this run is
    live, renewed every `BEAT_S` by a thread of its own; removed at the end, unless another
    run has taken the output over since."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, beat_s: float = BEAT_S):
        self.fs, self.root, self.beat_s = fs, root, beat_s
        self.path = join(root, HEARTBEAT)
        self.record = {"id": uuid.uuid4().hex[:12], **this_process(), "started_at": time.time()}
        self._made: list[str] = []  # the local folders made for it, deepest first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="output-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if is_local(self.fs):
            folder = os.path.abspath(self.root)
            while not os.path.exists(folder):
                self._made.append(folder)
                folder = os.path.dirname(folder)
            os.makedirs(self.root, exist_ok=True)
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            if read_json(self.fs, self.path).get("id") == self.record["id"]:
                self.fs.rm(self.path)
        except FileNotFoundError:
            pass
        for folder in self._made:  # a run refused before writing leaves no empty folder
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)

    def _write(self) -> None:
        write_json(self.fs, self.path, {**self.record, "beat_at": time.time()})

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                self._write()
            except OSError as e:  # a storage hiccup: the next beat tries again
                log.warning("heartbeat of %s not renewed: %s", self.path, e)
