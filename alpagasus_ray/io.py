"""Reading inputs into Ray Datasets and writing outputs, on local disk or S3 alike.

Every path goes through one fsspec filesystem (s3fs for `s3://`), built from the storage
config or the standard AWS environment, so tests against a local S3 server use exactly the
code path a user's bucket does.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from alpagasus_ray.config import InputConfig, StorageConfig

PARQUET_EXT = (".parquet", ".pq")
JSON_EXT = (".json", ".jsonl", ".ndjson")
DATA_DIR = "data"
MANIFEST = "manifest.json"
RUN_MARKER = "run.json"
READ_LOG_DIR = "read_log"  # one record per input file read: rows, or why it was skipped


def filesystem(uri: str, storage: StorageConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a local path or an s3:// URI."""
    opts = storage.s3_options() if uri.startswith(("s3://", "s3a://")) else {}
    return url_to_fs(uri, **opts)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def list_input_files(cfg: InputConfig, storage: StorageConfig) -> tuple[Any, list[str], str]:
    """(filesystem, files, format). A directory is searched recursively for data files."""
    fs, path = filesystem(cfg.uri, storage)
    if any(ch in path for ch in "*?["):
        files = sorted(fs.glob(path))
    elif fs.isdir(path):
        files = sorted(f for f in fs.find(path) if f.lower().endswith(PARQUET_EXT + JSON_EXT))
    elif fs.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(f"input {cfg.uri} does not exist")
    files = [f for f in files if fs.isfile(f)]
    if not files:
        raise FileNotFoundError(f"no input files found at {cfg.uri}")
    fmt = cfg.format
    if fmt == "auto":
        kinds = {"parquet" if f.lower().endswith(PARQUET_EXT) else "json" for f in files}
        if len(kinds) > 1:
            raise ValueError(f"input {cfg.uri} mixes Parquet and JSON files; set input.format")
        fmt = kinds.pop()
    return fs, files, "json" if fmt == "jsonl" else fmt


def read_input(
    cfg: InputConfig,
    storage: StorageConfig,
    num_cpus: float = 1.0,
    rows_per_block: int = 64,
    read_log: tuple[fsspec.AbstractFileSystem, str] | None = None,
    listing: tuple[Any, list[str], str] | None = None,
    progress: Any = None,
) -> Any:
    """A streaming Ray Dataset of raw rows in blocks of at most `rows_per_block` rows; the
    driver never holds the data.

    Bounded blocks are what let one big file fan out over every judge replica (a block goes
    to one replica) and keep a worker's memory independent of the file's size. Parquet rows
    keep their columns. JSON and JSONL records become one row each with the record's text in
    `_json`, so a broken line is one quarantined row, not a failed read. With `read_log`
    (filesystem, folder), each file read leaves its row count there (`read_log_records`).
    `listing` is what `list_input_files` returned, when the caller has listed already;
    `progress` a `filter.progress.ProgressCounter` that hears how far each file is read.
    """
    import ray.data

    from alpagasus_ray.sources import JsonRecordsDatasource, ParquetRecordsDatasource

    fs, files, fmt = listing or list_input_files(cfg, storage)
    kind = ParquetRecordsDatasource if fmt == "parquet" else JsonRecordsDatasource
    skip = cfg.on_unreadable_file == "skip"
    source = kind(
        files,
        filesystem=fs,
        rows_per_block=rows_per_block,
        read_log=read_log,
        skip_unreadable=skip,
        progress=progress,
    )
    ds = ray.data.read_datasource(source, num_cpus=num_cpus)
    ds = ds.limit(cfg.limit) if cfg.limit else ds
    # Streaming: splits big blocks (a one-row-group Parquet file) and merges tiny ones
    # (thousands of small shards) without materialising anything.
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    # Its tasks would ask for a whole CPU (`repartition` takes no remote args), which a small
    # cluster whose actors hold all but a fraction of a CPU never has: the job would hang.
    # Ray is pinned, so setting the logical operator's args directly is safe; a test checks it.
    ds._logical_plan.dag.ray_remote_args["num_cpus"] = num_cpus
    return ds


def write_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    with fs.open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "r") as f:
        return json.load(f)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    with fs.open(path, "wb") as f:
        f.write(data)


def prepare_output(fs: fsspec.AbstractFileSystem, root: str, overwrite: bool) -> None:
    """Refuse to mix a new run into an old output unless told to replace it."""
    if fs.exists(root) and fs.ls(root):
        if not overwrite:
            raise FileExistsError(
                f"output {root} is not empty; set output.overwrite=true to replace it"
            )
        fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)


def read_log_records(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """What the read tasks recorded per input file (rows read, and the error of a file
    skipped as unreadable), by path."""
    folder = join(root, READ_LOG_DIR)
    if not fs.exists(folder):
        return {}
    records = (read_json(fs, f) for f in fs.find(folder) if f.endswith(".json"))
    return {r["path"]: r for r in records}


class OutputTakenError(RuntimeError):
    """Another run wrote into this output while this one ran."""


class UnfinishedFilterOutput(ValueError):
    """A filter output whose run did not finish: its rows are a partial mix of decisions,
    so a step that wants the kept set refuses it."""


def claim_output(
    fs: fsspec.AbstractFileSystem, root: str, extra: dict[str, Any] | None = None
) -> str:
    """Mark the output as this run's (`run.json`, with `extra`: what a resumed run checks);
    returns the run id that `check_claim` expects to find there at the end."""
    run_id = uuid.uuid4().hex
    marker = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), **(extra or {})}
    write_json(fs, join(root, RUN_MARKER), marker)
    return run_id


def check_claim(fs: fsspec.AbstractFileSystem, root: str, run_id: str) -> None:
    """Refuse to call an output complete when another run replaced or joined it meanwhile
    (its `overwrite` removed our marker and wrote its own): the data would mix both runs."""
    try:
        holder = read_json(fs, join(root, RUN_MARKER)).get("run_id")
    except FileNotFoundError:
        holder = None
    if holder != run_id:
        raise OutputTakenError(
            f"output {root} was taken over by another run ({holder or 'marker removed'}) "
            f"while this one ran: its data mixes both runs, so no manifest is written"
        )


def parquet_dataset(
    fs: fsspec.AbstractFileSystem,
    path: str,
    partitioning: str | None = None,
    every_column: bool = False,
) -> Any:
    """The Parquet files under `path` (local or S3) as one pyarrow dataset.

    Its schema is the first file's, which is enough to read known columns. With
    `every_column`, it is the union of every file's (one footer read per file), so that a
    column only some blocks had (a quarantined record's own keys) is not lost on a rewrite.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    pafs = PyFileSystem(FSSpecHandler(fs))
    found = pads.dataset(path, filesystem=pafs, format="parquet", partitioning=partitioning)
    if not every_column:
        return found
    schemas = [found.schema, *(f.physical_schema for f in found.get_fragments())]
    return found.replace_schema(pa.unify_schemas(schemas, promote_options="permissive"))


def output_dataset(fs: fsspec.AbstractFileSystem, root: str, every_column: bool = False) -> Any:
    """The written partitions as a pyarrow dataset (hive `decision=` folders)."""
    return parquet_dataset(fs, join(root, DATA_DIR), "hive", every_column)


def read_output_table(
    fs: fsspec.AbstractFileSystem, root: str, columns: list[str] | None = None
) -> Any:
    return output_dataset(fs, root).to_table(columns=columns)
