"""The input files as one Ray Data datasource that streams each file in bounded blocks.

Every row carries its file (`_source`) and its position there (`_row`). Record files (JSON,
JSON lines, CSV, TSV): one row per record, keeping its text (`_json`), so that validation
can quarantine a broken record as one row instead of failing the read. Columnar files
(Parquet, Arrow): their record batches. Ray's own `read_parquet` would do for Parquet, but its
metadata tasks ask for a whole CPU each, which hangs a small cluster whose actors hold all but
a fraction of one. Imported by `read.read_input`, so that importing `io` does not load Ray
Data."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from alpagasus_ray.core.errors import StorageNotShared, UnreadableInputError, first_line
from alpagasus_ray.core.runtime import this_node
from alpagasus_ray.data import columnar
from alpagasus_ray.data.formats import FileFormat, format_of
from alpagasus_ray.data.records import Counted, decoded, decompressed, records, starts_array
from alpagasus_ray.data.schema import RAW_JSON, READ_ERROR, READ_ROW, READ_SOURCE


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


class InputDatasource(_BlockedDatasource):
    """Every input file in its own format (`data/formats.py`): a columnar file's record
    batches, or a record file's records as one `_json` text each, with `_read_error` where
    a record cannot be trusted (`data/records.py`). A JSON-lines, CSV or TSV file streams in
    bounded memory whatever its size; a JSON-array document is one value, parsed whole in its
    read task (memory a few times the file's size: convert such files to JSON lines beyond
    a few GB). `declared` is `input.format`."""

    def __init__(self, paths: list[str], *, declared: str = "auto", **kwargs: Any):
        super().__init__(paths, **kwargs)
        self.declared = declared

    def _format(self, path: str) -> FileFormat:
        found = format_of(path, self.declared)
        if found is None:  # the listing refused or skipped it already
            raise ValueError(f"{path} is not a format alpagasus-ray reads")
        return found

    def _open(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        if self._format(path).columnar:
            return filesystem.open_input_file(path)  # random access (a footer, a header)
        # Raw bytes: records.decompressed decompresses (pyarrow passes .xz through as is).
        size = self._data_context.streaming_read_buffer_size
        return filesystem.open_input_stream(path, buffer_size=size, compression=None)

    def _blocks(self, f: Any, path: str) -> Iterator[pa.Table]:
        fmt, start = self._format(path), 0
        if fmt.columnar:
            for batch in columnar.batches(f, fmt, self.rows_per_block):
                if batch.num_rows:
                    yield _positioned(pa.Table.from_batches([batch]), path, start)
                    start += batch.num_rows
            return
        counted = Counted(f)
        binary = decompressed(counted, fmt.compression)
        # An array is read whole before its first record: its offset says nothing of its rows.
        streamed = not (fmt.kind == "json" and starts_array(binary))
        stream = records(decoded(binary), fmt.kind)
        while chunk := list(itertools.islice(stream, self.rows_per_block)):
            texts, errors = zip(*chunk, strict=True)
            table = pa.table({RAW_JSON: pa.array(texts, pa.string()),
                              READ_ERROR: pa.array(errors, pa.string())})  # fmt: skip
            table, start = _positioned(table, path, start), start + len(chunk)
            if streamed:  # before the block goes on, in order
                self._reached(path, counted.bytes, start)
            yield table


def _positioned(table: pa.Table, path: str, start: int) -> pa.Table:
    """The block with its file and each row's position in it: a row's identity at read time,
    which a resumed run skips by."""
    n = table.num_rows
    table = table.append_column(READ_SOURCE, pa.array([path] * n, pa.string()))
    return table.append_column(READ_ROW, pa.array(range(start, start + n), pa.int64()))
