"""Columnar files (Parquet, Arrow IPC, a `datasets` folder's shards) as bounded record
batches and as schemas. Memory follows the row group or batch being read, not the file.

Arrow IPC comes in two layouts: the *file* format (`ARROW1` magic, random access) and the
*stream* format, which `datasets.save_to_disk` writes its shards in; both are read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from alpagasus_ray.data.formats import FileFormat

ARROW_MAGIC = b"ARROW1"


def batches(f: Any, fmt: FileFormat, rows_per_block: int) -> Iterator[pa.RecordBatch]:
    """The file's rows as record batches of at most `rows_per_block` rows; `f` is a
    random-access file."""
    if fmt.kind == "parquet":
        import pyarrow.parquet as pq

        yield from pq.ParquetFile(f).iter_batches(batch_size=rows_per_block)
        return
    for batch in _arrow_batches(f):
        for start in range(0, batch.num_rows, rows_per_block):
            yield batch.slice(start, rows_per_block)


def _arrow_batches(f: Any) -> Iterator[pa.RecordBatch]:
    if _is_ipc_file(f):
        reader = pa.ipc.open_file(f)
        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        yield from pa.ipc.open_stream(f)


def _is_ipc_file(f: Any) -> bool:
    head = f.read(len(ARROW_MAGIC))
    f.seek(0)
    return head == ARROW_MAGIC


def schema(f: Any, fmt: FileFormat) -> pa.Schema:
    """The file's schema: a Parquet footer, or an Arrow file's or stream's header."""
    if fmt.kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(f)
    return pa.ipc.open_file(f).schema if _is_ipc_file(f) else pa.ipc.open_stream(f).schema


def row_count(f: Any, fmt: FileFormat) -> int | None:
    """The file's rows when its metadata says so (a Parquet footer), else None."""
    if fmt.kind != "parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(f).metadata.num_rows
