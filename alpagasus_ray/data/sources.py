"""The input formats as Ray Data datasources that stream each file in bounded blocks.

Every row carries its file (`_source`) and its position there (`_row`). JSON and JSON lines:
one row per record, keeping its raw text (`_json`), so that validation can quarantine a
broken line as one row instead of failing the read. Parquet: record batches of its row
groups. Ray's own `read_parquet` would do for Parquet, but its metadata tasks ask for a whole
CPU each, which hangs a small cluster whose actors hold all but a fraction of one. Imported
by `io.read_input`, so that importing `io` does not load Ray Data."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from alpagasus_ray.core.errors import StorageNotShared, UnreadableInputError, first_line
from alpagasus_ray.core.runtime import this_node
from alpagasus_ray.data.schema import RAW_JSON, READ_ROW, READ_SOURCE


class _Unopened:
    """Stands in for a file that could not be opened, so that a skipping read can record it
    (Ray opens the file before our `_read_stream` runs)."""

    def __init__(self, error: Exception):
        self.error = error

    def __enter__(self) -> _Unopened:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _BlockedDatasource(FileBasedDatasource):
    """A file datasource that yields blocks of at most `rows_per_block` rows.

    With `read_log` (filesystem, folder) set, every file read to its end leaves one small
    JSON record there (path, rows, error): the job counts the rows it read from these as they
    flow, instead of reading the input a second time. A file that cannot be opened or parsed
    fails the read with its path; with `skip_unreadable` (`input.on_unreadable_file: skip`)
    its record says why and how many rows were read before, and the read goes on. A local
    file the driver listed and this node cannot find is never skipped: the node does not
    share the driver's disk (or the file went), and the job stops naming both. Errors
    that Ray retries (`DataContext.retried_io_errors`: throttling, timeouts) are retried
    first, never skipped. With `progress` (a `filter.progress.ProgressCounter`), it hears how
    far each file has been read, so the progress line can estimate a JSON input's total.
    """

    def __init__(
        self,
        paths: list[str],
        *,
        rows_per_block: int,
        read_log: tuple[Any, str] | None = None,
        skip_unreadable: bool = False,
        progress: Any = None,
        local: bool = False,
        **kwargs: Any,
    ):
        super().__init__(paths, **kwargs)
        self.local = local  # the files are on the driver's local disk, listed there
        self.rows_per_block = rows_per_block
        self.read_log = read_log
        self.skip_unreadable = skip_unreadable
        self.progress = progress

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        try:
            return self._open(filesystem, path, **open_args)
        except Exception as e:  # noqa: BLE001 - any failure to open is the file's
            return self._skip_or_raise(path, e)

    def _open(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: Any, path: str) -> Iterator[Any]:
        if isinstance(f, _Unopened):
            self._log(path, 0, f.error)
            return
        rows = 0
        try:
            for table in self._blocks(f, path):
                rows += table.num_rows
                yield table
        except Exception as e:  # noqa: BLE001 - a corrupt file, whatever the parser raises
            self._log(path, rows, self._skip_or_raise(path, e).error)
            return
        self._log(path, rows, None)

    def _blocks(self, f: Any, path: str) -> Iterator[pa.Table]:
        raise NotImplementedError

    def _skip_or_raise(self, path: str, error: Exception) -> _Unopened:
        """Transient errors go back to Ray, which retries them; others fail with the path,
        or are skipped when asked to."""
        if any(pattern in str(error) for pattern in self._data_context.retried_io_errors):
            raise error
        if self.local and isinstance(error, FileNotFoundError):  # listed by the driver
            raise StorageNotShared("input.uri", path, this_node()) from error
        if not self.skip_unreadable:
            raise UnreadableInputError(path, error) from error
        return _Unopened(error)

    def _reached(self, path: str, offset: int, rows: int, done: bool = False) -> None:
        """Tell the progress counter how far into `path` the read is (fire and forget)."""
        if self.progress is not None:
            self.progress.reading.remote(path, offset, rows, done)

    def _log(self, path: str, rows: int, error: Exception | None) -> None:
        """One record per file, named by its path: a retried read task rewrites the same."""
        self._reached(path, 0, rows, done=True)
        if self.read_log is None:
            return
        fs, folder = self.read_log
        name = hashlib.sha256(path.encode()).hexdigest()[:16] + ".json"
        record = {"path": path, "rows": rows, "error": error and first_line(error)}
        try:
            with fs.open(f"{folder}/{name}", "w") as out:
                json.dump(record, out)
        except FileNotFoundError as e:  # the driver made the folder: this node cannot see it
            raise StorageNotShared("output.uri", folder, this_node()) from e


class JsonRecordsDatasource(_BlockedDatasource):
    """JSON-lines files read line by line, and JSON-array files, as blocks of at most
    `rows_per_block` records. A JSON-lines file streams in bounded memory whatever its size;
    a JSON-array document is one value, so it is parsed whole in its read task (memory about
    a few times the file's size: split such files, or convert them to JSON lines, beyond a
    few GB)."""

    def _blocks(self, f: Any, path: str) -> Iterator[pa.Table]:
        counted = _Counted(f)  # Ray's input streams cannot tell() their position
        # newline="": a parser's line and column are the file's own, CRLF or not.
        text = io.TextIOWrapper(
            io.BufferedReader(counted), encoding="utf-8", errors="replace", newline=""
        )
        head = first = ""
        while not first.strip() and (line := text.readline()):
            first, head = line, head + line
        array = first.lstrip().startswith("[")
        if array:
            records = _array_records(head + text.read())
        else:
            lines = itertools.chain([first], text)
            records = (line.rstrip("\r\n") for line in lines if line.strip())
        start = 0
        while chunk := list(itertools.islice(records, self.rows_per_block)):
            table = _positioned(pa.table({RAW_JSON: chunk}), path, start)
            start += len(chunk)
            if not array:  # an array is read whole first: its offset says nothing of its rows
                self._reached(path, counted.bytes, start)
            yield table


class _Counted(io.RawIOBase):
    """A binary stream that counts the bytes read through it."""

    def __init__(self, f: Any):
        self.f, self.bytes = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.f.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes += len(data)
        return len(data)


def _array_records(text: str) -> Iterator[str]:
    """The records of one JSON array document, each as JSON text. A document that does not
    parse (a half-downloaded file) raises the parser's error: it is a file error, like a
    corrupt Parquet file (`_skip_or_raise`), since no record in it can be trusted as a row."""
    records = json.loads(text)
    return (json.dumps(record, ensure_ascii=False) for record in records)


class ParquetRecordsDatasource(_BlockedDatasource):
    """Parquet files as blocks of at most `rows_per_block` rows, read batch by batch: memory
    follows the row group being read, not the file."""

    def _open(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        return filesystem.open_input_file(path)  # Parquet needs random access (its footer)

    def _blocks(self, f: Any, path: str) -> Iterator[pa.Table]:
        parquet, start = pq.ParquetFile(f), 0
        for batch in parquet.iter_batches(batch_size=self.rows_per_block):
            yield _positioned(pa.Table.from_batches([batch]), path, start)
            start += batch.num_rows


def _positioned(table: pa.Table, path: str, start: int) -> pa.Table:
    """The block with its file and each row's position in it: a row's identity at read time,
    which a resumed run skips by."""
    n = table.num_rows
    table = table.append_column(READ_SOURCE, pa.array([path] * n, pa.string()))
    return table.append_column(READ_ROW, pa.array(range(start, start + n), pa.int64()))
