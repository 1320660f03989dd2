"""Where a lane's CPU went, by kind of process: `python cpu_by_process.py OUT [TOP]`.

Samples every process's CPU seconds (`/proc/PID/stat`) twice a second until it gets a
SIGTERM, then writes to OUT the seconds of each kind: a Ray actor or task by its process
title (`ray::RunLedger`, `ray::MapWorker(MapBatches(PromptStage))`), vLLM's engine core, a
Ray service (raylet, GCS server, dashboard agent, log monitor), a command the tests ran.
The time by test file (`time_by_file.py`) says which tests took long; this says what the
machine did meanwhile, and how many processes of each kind it started: most of the suite's
CPU goes to starting processes that import large libraries, not to the tests' own rows.

A process that lived less than half a second may be missed, and the last half second of
each is; the figures are a map, not an invoice. The machine's other processes are counted
too: run it on an otherwise quiet machine.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

CLOCK = os.sysconf("SC_CLK_TCK")
# A command line containing one of these names that kind (first match wins).
NAMED = ("api_server", "stress-ng", "gcs_server", "dashboard_agent", "runtime_env/agent",
         "log_monitor", "dashboard.py", "monitor.py", "ray-dashboard", "crash_driver.py",
         "jobs/filter.py")  # fmt: skip


def kind(pid: int) -> str | None:
    """The kind of a process by its command line (None: gone, or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    line = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    if not line:
        return None
    first = line.split()[0]
    if line.startswith("ray::"):  # a Ray worker's title: its actor or task
        return first[:70]
    if "default_worker.py" in line:
        return "ray worker, starting"
    if "multiprocessing.spawn" in line:
        return "a spawned Python (vLLM's engine core, before its title)"
    named = next((name for name in NAMED if name in line), None)
    if named:
        return named
    if first.endswith("raylet"):
        return "raylet"
    if any("pytest" in part for part in line.split()[:2]):  # `python3 .venv/bin/pytest`
        return "pytest"
    if "alpagasus" in line:
        return "alpagasus-ray command"
    return line[:50]


# A worker's title changes as it starts and as it runs tasks: these are read again.
PROVISIONAL = ("ray worker, starting", "a spawned Python", "ray::")


class Sampler:
    def __init__(self) -> None:
        self.seen: dict[int, tuple[str | None, float]] = {}  # pid: (kind, CPU seconds)
        self.before: dict[int, float] = {}  # CPU seconds of what ran before the first look

    def sample(self) -> None:
        first = not self.seen
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK  # utime + stime
            known = self.seen.get(pid, (None, 0.0))[0]
            if known is None or known.startswith(PROVISIONAL):
                now = "VLLM::EngineCore" if name.startswith("VLLM") else kind(pid)
                # An idle worker keeps the name of the last actor or task it ran.
                if known and now == "ray::IDLE" and known.startswith("ray::"):
                    now = known
                known = now or known
            self.seen[pid] = (known, cpu)
            if first:
                self.before[pid] = cpu

    def used(self) -> dict[int, tuple[str | None, float]]:
        """pid: (kind, CPU seconds since the first look), this process left out."""
        return {pid: (name, cpu - self.before.get(pid, 0.0))
                for pid, (name, cpu) in self.seen.items() if pid != os.getpid()}  # fmt: skip

    def table(self, top: int) -> list[str]:
        totals: dict[str, list[float]] = {}
        for name, cpu in self.used().values():
            if name is not None and cpu > 0:
                total = totals.setdefault(name, [0.0, 0])
                total[0] += cpu
                total[1] += 1
        everything = sum(cpu for cpu, _ in totals.values()) or 1.0
        rows = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
        lines = [f"{'CPU s':>8} {'share':>6} {'procs':>5}  kind of process"]
        lines += [f"{c:8.0f} {c / everything:6.1%} {n:5d}  {name}" for name, (c, n) in rows]
        return lines


def main(out: str, top: int) -> None:
    sampler, start = Sampler(), time.monotonic()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    Path(out).write_text("")  # ready: a SIGTERM from now on ends it with its table
    while not stop:
        sampler.sample()
        time.sleep(0.5)
    wall = time.monotonic() - start
    lines = sampler.table(top)
    used = sum(cpu for _, cpu in sampler.used().values())
    lines.append(f"counted {used:,.0f} CPU s in {wall:,.0f} s on {os.cpu_count()} CPUs")
    Path(out).write_text("\n".join(lines) + "\n")  # `[ -s OUT ]`: the table is written


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
