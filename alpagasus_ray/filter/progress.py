"""One progress line on stderr: rows decided (of the total when known), rows/s, ETA, kept.

The decide stage reports each batch to a small actor (no CPU; a few bytes per batch); the
driver reads it every few seconds and rewrites the line in place on a terminal, or prints a
new line every `interval_s` otherwise (logs of `ray job submit`). The total is known for
Parquet input (the footers' row counts, read in the background) and with `input.limit`; for
JSON it is not known until the read ends, and the line says rows and rate only.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import ray


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Rows decided and kept so far, as the decide tasks report them."""

    def __init__(self) -> None:
        self.rows = self.kept = 0

    def add(self, rows: int, kept: int) -> None:
        self.rows += rows
        self.kept += kept

    def read(self) -> tuple[int, int]:
        return self.rows, self.kept


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_text(done: int, total: int | None, kept: int, rate: float) -> str:
    """`filter: 12,345/300,000 rows (4.1%), 2,310 rows/s, ETA 2m05s, kept 4,321`."""
    head = f"filter: {done:,}"
    if total:
        head += f"/{total:,} rows ({done / total:.1%})"
    else:
        head += " rows"
    parts = [head, f"{rate:,.0f} rows/s"]
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    parts.append(f"kept {kept:,}")
    return ", ".join(parts)


class ProgressLine:
    """Prints the progress of `counter` until stopped. `total` is a callable that may take a
    while (it runs in the printing thread); `start` is (rows, kept) of earlier attempts (a
    resume), counted as done but not in the rate."""

    def __init__(
        self,
        counter: Any,
        total: Callable[[], int | None] | None = None,
        start: tuple[int, int] = (0, 0),
        stream: TextIO | None = None,
        interval_s: float | None = None,
    ):
        self.counter, self.total_fn, self.start = counter, total, start
        self.total: int | None = None
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (1.0 if self.tty else 10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="progress")
        self._started = time.monotonic()

    def __enter__(self) -> ProgressLine:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._print(final=True)

    def _run(self) -> None:
        try:
            self.total = self.total_fn() if self.total_fn else None
        except Exception:  # noqa: BLE001 - without a total the line shows rows and rate
            self.total = None
        while not self._stop.wait(self.interval_s):
            self._print()

    def _print(self, final: bool = False) -> None:
        try:
            rows, kept = ray.get(self.counter.read.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress must never fail the job
            return
        rate = rows / max(time.monotonic() - self._started, 1e-9)
        text = progress_text(self.start[0] + rows, self.total, self.start[1] + kept, rate)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
