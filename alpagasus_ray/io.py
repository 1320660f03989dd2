"""Reading inputs into Ray Datasets and writing outputs, on local disk or S3 alike.

Every path goes through one fsspec filesystem (s3fs for `s3://`), built from the storage
config or the standard AWS environment, so tests against a local S3 server use exactly the
code path a user's bucket does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from alpagasus_ray.config import InputConfig, StorageConfig
from alpagasus_ray.schema import RAW_JSON, SOURCE

PARQUET_EXT = (".parquet", ".pq")
JSON_EXT = (".json", ".jsonl", ".ndjson")
DATA_DIR = "data"
MANIFEST = "manifest.json"


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


def read_input(cfg: InputConfig, storage: StorageConfig, num_cpus: float = 1.0) -> Any:
    """A streaming Ray Dataset of raw rows; the driver never holds the data.

    Parquet rows keep their columns. JSON and JSONL files become one row per record with
    the record's text in `_json`, so a broken line is one quarantined row, not a failed read.
    """
    import ray.data

    fs, files, fmt = list_input_files(cfg, storage)
    if fmt == "parquet":
        # Ray adds the file path as `path`; validation turns it into our `source` column.
        ds = ray.data.read_parquet(files, filesystem=fs, include_paths=True, num_cpus=num_cpus)
    else:
        ds = ray.data.read_binary_files(files, filesystem=fs, include_paths=True, num_cpus=num_cpus)
        ds = ds.flat_map(split_json_file, num_cpus=num_cpus)
    return ds.limit(cfg.limit) if cfg.limit else ds


def split_json_file(file_row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One row per record of a JSON array file or a JSON-lines file (decided by content)."""
    data: bytes = file_row["bytes"]
    source = file_row["path"]
    text = data.decode("utf-8", errors="replace")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            # The file is one broken document: nothing in it can be trusted as a row.
            yield {RAW_JSON: text[:2000] + f"\n<<unparseable JSON array: {e}>>", SOURCE: source}
            return
        for record in records:
            yield {RAW_JSON: json.dumps(record, ensure_ascii=False), SOURCE: source}
        return
    for line in text.splitlines():
        if line.strip():
            yield {RAW_JSON: line, SOURCE: source}


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


def parquet_dataset(
    fs: fsspec.AbstractFileSystem, path: str, partitioning: str | None = None
) -> Any:
    """The Parquet files under `path` (local or S3) as one pyarrow dataset."""
    import pyarrow.dataset as pads
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    pafs = PyFileSystem(FSSpecHandler(fs))
    return pads.dataset(path, filesystem=pafs, format="parquet", partitioning=partitioning)


def output_dataset(fs: fsspec.AbstractFileSystem, root: str) -> Any:
    """The written partitions as a pyarrow dataset (hive `decision=` folders)."""
    return parquet_dataset(fs, join(root, DATA_DIR), partitioning="hive")


def read_output_table(
    fs: fsspec.AbstractFileSystem, root: str, columns: list[str] | None = None
) -> Any:
    return output_dataset(fs, root).to_table(columns=columns)
