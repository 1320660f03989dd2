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

from alpagasus_ray.core.config import StorageConfig

DATA_DIR = "data"
MANIFEST = "manifest.json"
RUN_MARKER = "run.json"
HEARTBEAT = "heartbeat.json"  # a live run's, while it runs (data/heartbeat.py)
READ_LOG_DIR = "read_log"  # one record per input file read: rows, or why it was skipped


def filesystem(uri: str, storage: StorageConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for a local path or an s3:// URI."""
    opts = storage.s3_options() if uri.startswith(("s3://", "s3a://")) else {}
    return url_to_fs(uri, **opts)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """`path` holds either its old bytes or `data`, whenever the process dies: a rename of
    a complete temporary file on disk; one PUT, which S3 applies whole or not at all."""
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    """`obj` as indented JSON, written whole or not at all (`write_atomic`)."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    write_atomic(fs, path, text.encode())


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "r") as f:
        return json.load(f)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    with fs.open(path, "wb") as f:
        f.write(data)


def prepare_output(fs: fsspec.AbstractFileSystem, root: str, overwrite: bool) -> None:
    """Refuse to mix a new run into an old output unless told to replace it; replace only an
    output this tool wrote (its marker), and only the files it writes there: `overwrite`
    pointed at the wrong folder must not delete a user's data. The root itself stays (it may
    be a bucket)."""
    entries = output_entries(fs, root)
    if entries:
        if not overwrite:
            raise FileExistsError(
                f"output {root} is not empty; set output.overwrite=true to replace it"
            )
        if not is_marked_output(fs, root):
            raise FileExistsError(f"output {foreign_output_cause(root)}")
        remove_own_files(fs, root, entries)
    fs.makedirs(root, exist_ok=True)


# What alpagasus-ray writes at an output's root, all that `overwrite` removes: the filter's
# (filter/job.py, report.py, redecide.py, resume.py, duplicates.py, manifest.py,
# engines/api_budget.py) and the evaluation's (evaluate/job.py, evaluate/report.py), each
# also as the temporary file it is written through (`<name>.tmp`, `<name>.<hex>.tmp`).
OWN_NAMES = frozenset(
    {MANIFEST, RUN_MARKER, HEARTBEAT, DATA_DIR, f"{DATA_DIR}.redecided", READ_LOG_DIR}
    | {"report.json"}
    | {"report.md", "score_histogram.png", "api_spend.json", "answers", "judgments"}
    | {"outcomes.parquet", "position_bias.png"}
)
OWN_PATTERNS = ("winloss_*.png",)


def output_entries(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The paths directly in `root`, none if it does not exist (S3 may list `root` itself),
    but for the heartbeat of the run about to write it (`data/heartbeat.py`)."""
    if not fs.exists(root):
        return []
    return [
        e
        for e in fs.ls(root, detail=False)
        if e.rstrip("/") != root.rstrip("/") and _bare_name(e) != HEARTBEAT
    ]


def _bare_name(path: str) -> str:
    """A path's last part without the suffix of the temporary file it is written through."""
    import re

    return re.sub(r"(\.[0-9a-f]+)?\.tmp$", "", path.rstrip("/").rsplit("/", 1)[-1])


def foreign_output_cause(uri: str) -> str:
    """Why a non-empty folder without our marker is not replaced, in one line."""
    return (
        f"{uri} is not empty and was not written by alpagasus-ray; choose another "
        "output.uri or empty it yourself"
    )


def is_marked_output(fs: fsspec.AbstractFileSystem, root: str) -> bool:
    """An output a run of this tool wrote: `run.json` (a filter run) or `manifest.json`."""
    return any(fs.exists(join(root, name)) for name in (RUN_MARKER, MANIFEST))


def is_own_name(name: str) -> bool:
    """Whether a run of this tool writes `name` at an output's root."""
    import fnmatch

    name = _bare_name(name)
    return name in OWN_NAMES or any(fnmatch.fnmatchcase(name, p) for p in OWN_PATTERNS)


def remove_own_files(fs: fsspec.AbstractFileSystem, root: str, entries: list[str]) -> None:
    """Remove what an earlier run wrote, `manifest.json` first (a reader of a half-removed
    output sees an unfinished run, never a complete manifest over missing files) and
    `run.json` last (until then a rerun still knows the output is ours); anything else in
    `entries` is the user's and stays."""
    import logging
    import posixpath

    by_name = {posixpath.basename(e.rstrip("/")): e for e in entries}
    own = [n for n in sorted(by_name) if is_own_name(n) and n not in (MANIFEST, RUN_MARKER)]
    for name in [MANIFEST, *own, RUN_MARKER]:
        if name in by_name:
            fs.rm(by_name[name], recursive=True)
    others = sorted(n for n in by_name if not is_own_name(n))
    log = logging.getLogger(__name__)
    log.info("overwrite: removed the earlier run's files from %s", root)
    if others:
        log.warning("overwrite: left what alpagasus-ray did not write in %s: %s", root, others)


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
    write_json(fs, join(root, RUN_MARKER), marker)  # a kill leaves the old or the new
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
    path: str | list[str],
    partitioning: str | None = None,
    every_column: bool = False,
    base_dir: str | None = None,
) -> Any:
    """The Parquet files under `path` (local or S3), or the files `path` lists (with their
    partition folders under `base_dir`), as one pyarrow dataset.

    Its schema is the first file's, which is enough to read known columns. With
    `every_column`, it is the union of every file's (one footer read per file), so that a
    column only some blocks had (a quarantined record's own keys) is not lost on a rewrite.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    pafs = PyFileSystem(FSSpecHandler(fs))
    extra = {"partition_base_dir": base_dir} if base_dir else {}
    found = pads.dataset(
        path, filesystem=pafs, format="parquet", partitioning=partitioning, **extra
    )
    if not every_column:
        return found
    schemas = [found.schema, *(f.physical_schema for f in found.get_fragments())]
    return found.replace_schema(pa.unify_schemas(schemas, promote_options="permissive"))


def output_dataset(
    fs: fsspec.AbstractFileSystem,
    root: str,
    files: list[str],
    every_column: bool = False,
) -> Any:
    """The output's data `files` (a committed manifest's, or those the run writing it
    knows) as one pyarrow dataset, with the decision of their hive `decision=` folders."""
    return parquet_dataset(fs, list(files), "hive", every_column, join(root, DATA_DIR))


def read_output_table(
    fs: fsspec.AbstractFileSystem,
    root: str,
    files: list[str],
    columns: list[str] | None = None,
) -> Any:
    """The rows of `files`; with none (nothing written: every input file was skipped as
    unreadable), an empty table of the `columns` asked for, as there is no schema to read."""
    if not files:
        import pyarrow as pa

        return pa.table({c: pa.array([], pa.null()) for c in columns or []})
    return output_dataset(fs, root, files).to_table(columns=columns)
