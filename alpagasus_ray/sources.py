"""The input formats as Ray Data datasources that stream each file in bounded blocks.

JSON and JSON lines: one row per record, keeping its raw text (`_json`) and its file
(`source`), so validation can quarantine a broken line as one row instead of failing the
read. Parquet: record batches of its row groups, with the file as `path` (validation turns it
into `source`). Ray's own `read_parquet` would do for Parquet, but its metadata tasks ask for a
whole CPU each, which hangs a small cluster whose actors hold all but a fraction of one.
Imported by `io.read_input`, so that importing `io` does not load Ray Data.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from alpagasus_ray.schema import RAW_JSON, SOURCE


class _BlockedDatasource(FileBasedDatasource):
    """A file datasource that yields blocks of at most `rows_per_block` rows."""

    def __init__(self, paths: list[str], *, rows_per_block: int, **kwargs: Any):
        super().__init__(paths, **kwargs)
        self.rows_per_block = rows_per_block


class JsonRecordsDatasource(_BlockedDatasource):
    """JSON-lines files read line by line, and JSON-array files, as blocks of at most
    `rows_per_block` records. A JSON-lines file streams in bounded memory whatever its size;
    a JSON-array document is one value, so it is parsed whole in its read task (memory about
    a few times the file's size: split such files, or convert them to JSON lines, beyond a
    few GB)."""

    def _read_stream(self, f: Any, path: str) -> Iterator[Any]:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace")
        first = ""
        while not first.strip() and (line := text.readline()):
            first = line
        if first.lstrip().startswith("["):
            records = _array_records(first + text.read())
        else:
            lines = itertools.chain([first], text)
            records = (line.rstrip("\r\n") for line in lines if line.strip())
        while chunk := list(itertools.islice(records, self.rows_per_block)):
            yield pa.table({RAW_JSON: chunk, SOURCE: [path] * len(chunk)})


def _array_records(text: str) -> Iterator[str]:
    """The records of one JSON array document, each as JSON text."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        # The file is one broken document: nothing in it can be trusted as a row.
        yield text[:2000] + f"\n<<unparseable JSON array: {e}>>"
        return
    for record in records:
        yield json.dumps(record, ensure_ascii=False)


class ParquetRecordsDatasource(_BlockedDatasource):
    """Parquet files as blocks of at most `rows_per_block` rows, read batch by batch: memory
    follows the row group being read, not the file."""

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        return filesystem.open_input_file(path)  # Parquet needs random access (its footer)

    def _read_stream(self, f: Any, path: str) -> Iterator[Any]:
        try:
            parquet = pq.ParquetFile(f)
        except (OSError, ValueError) as e:  # a corrupt footer: say which file
            raise OSError(f"input file {path}: cannot read it as Parquet: {e}") from None
        for batch in parquet.iter_batches(batch_size=self.rows_per_block):
            table = pa.Table.from_batches([batch])
            yield table.append_column("path", pa.array([path] * table.num_rows, pa.string()))
