"""One progress line on stderr: rows decided (of the total when known), rows/s, ETA, kept.

The decide stage reports each batch to a small actor (no CPU; a few bytes per batch); the
driver reads it every few seconds and rewrites the line in place on a terminal, or prints a
new line every `interval_s` otherwise (logs of `ray job submit`). The total is known for
Parquet input (the footers' row counts, read in the background) and with `input.limit`. For
JSON it is estimated, marked `~`, from the files' sizes and how many rows the read tasks
have found in how many bytes so far, and it is exact once every file has been read.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import ray

from alpagasus_ray.data.listing import Listing


class ProgressCounter:
    """Rows decided and kept so far, as the decide tasks report them; and how far the read
    tasks are into each file: path -> (bytes, rows, read to its end).

    A task Ray runs again (its worker or node was lost after it reported) reports its batch
    again: a batch is known by its first row's place and its size (`batch_key`), counted
    once, and the repeats are counted apart, for the manifest (a run that survived a lost
    node says so)."""

    def __init__(self) -> None:
        self.rows = self.kept = self.repeats = 0
        self.batches: set[str] = set()
        self.files: dict[str, tuple[int, int, bool]] = {}

    def add(self, rows: int, kept: int, batch: str | None = None) -> None:
        if batch is not None:
            if batch in self.batches:
                self.repeats += 1
                return
            self.batches.add(batch)
        self.rows += rows
        self.kept += kept

    def batches_reported_again(self) -> int:
        return self.repeats

    def reading(self, path: str, offset: int, rows: int, done: bool) -> None:
        self.files[path] = (offset, rows, done)

    def read(self) -> tuple[int, int]:
        return self.rows, self.kept

    def read_files(self) -> dict[str, tuple[int, int, bool]]:
        return self.files


def batch_key(sources: list[Any], rows: list[Any]) -> str | None:
    """A decided batch's identity across task retries: its first row's file and position,
    and its size; None where rows carry no place (a user's own dataset)."""
    if not sources or sources[0] is None or rows[0] is None:
        return None
    return f"{sources[0]}\x1f{rows[0]}\x1f{len(rows)}"


def estimate_total(
    files: dict[str, tuple[int, int, bool]], sizes: dict[str, int]
) -> tuple[int | None, bool]:
    """(total rows, exact) of the input whose files have `sizes` (bytes), from how far the
    read is into each (`ProgressCounter.read_files`): exact once every file is read to its
    end; before that, the rows found so far plus the bytes still unread at the rows per byte
    seen so far; None before any row is found."""
    if sizes and all(files.get(path, (0, 0, False))[2] for path in sizes):
        return sum(files[path][1] for path in sizes), True
    seen_rows = seen_bytes = 0
    for path, (offset, rows, done) in files.items():
        if path in sizes:  # a finished file's bytes are all of it, whatever it last reported
            seen_rows += rows
            seen_bytes += sizes[path] if done else min(offset, sizes[path])
    if not seen_rows or not seen_bytes:
        return None, False
    unread = sum(sizes.values()) - seen_bytes
    return seen_rows + round(max(unread, 0) * seen_rows / seen_bytes), False


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_text(
    done: int, total: int | None, kept: int, rate: float, estimated: bool = False
) -> str:
    """`filter: 12,345/300,000 rows (4.1%), 2,310 rows/s, ETA 2m05s, kept 4,321`; an
    estimated total reads `/~300,000`."""
    head = f"filter: {done:,}"
    if total:
        head += f"/{'~' if estimated else ''}{total:,} rows ({done / total:.1%})"
    else:
        head += " rows"
    parts = [head, f"{rate:,.0f} rows/s"]
    if total and rate > 0 and done < total:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    parts.append(f"kept {kept:,}")
    return ", ".join(parts)


class ProgressLine:
    """Prints the progress of `counter` until stopped. `total` is a callable that may take a
    while (it runs in the printing thread); where it gives None, `sizes` (a callable giving
    the input files' sizes, also run there) lets the total be estimated as the read goes.
    `start` is (rows, kept) of earlier attempts (a resume), counted as done but not in the
    rate."""

    def __init__(
        self,
        counter: Any,
        total: Callable[[], int | None] | None = None,
        start: tuple[int, int] = (0, 0),
        stream: TextIO | None = None,
        interval_s: float | None = None,
        sizes: Callable[[], dict[str, int]] | None = None,
    ):
        self.counter, self.total_fn, self.start = counter, total, start
        self.sizes_fn = sizes
        self.total: int | None = None
        self.sizes: dict[str, int] = {}
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
            if self.total is None and self.sizes_fn:
                self.sizes = self.sizes_fn()
        except Exception:  # noqa: BLE001 - without a total the line shows rows and rate
            self.total = None
        while not self._stop.wait(self.interval_s):
            self._print()

    def _print(self, final: bool = False) -> None:
        total, estimated = self.total, False
        try:
            rows, kept = ray.get(self.counter.read.remote(), timeout=10)
            if total is None and self.sizes:
                files = ray.get(self.counter.read_files.remote(), timeout=10)
                total, exact = estimate_total(files, self.sizes)
                estimated = not exact
                if estimated and total is not None:  # never less than what is done
                    total = max(total, self.start[0] + rows)
        except Exception:  # noqa: BLE001 - progress must never fail the job
            return
        rate = rows / max(time.monotonic() - self._started, 1e-9)
        done = self.start[0] + rows
        text = progress_text(done, total, self.start[1] + kept, rate, estimated)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def input_rows(limit: int | None, listing: Listing) -> int | None:
    """The rows the job will read, when that is cheap to know: Parquet footers, or the limit;
    None for other files, whose rows are only known once read."""
    fs, files, formats, _ = listing
    total: int | None = None
    if all(f.kind == "parquet" for f in formats.values()):
        from alpagasus_ray.data.columnar import row_count

        total = 0
        for path in files:
            with fs.open(path, "rb") as f:
                total += row_count(f, formats[path]) or 0
    if limit:
        return min(limit, total) if total is not None else limit
    return total


def input_sizes(listing: Listing) -> dict[str, int]:
    """Record files' sizes in bytes (compressed, as their reads count them), from which the
    progress line estimates the rows before the read has counted them; none for columnar
    files."""
    fs, files, formats, _ = listing
    return {path: fs.size(path) for path in files if not formats[path].columnar}
