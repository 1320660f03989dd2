"""The manifest is the commit: a filter output's state is the one `manifest.json` that lists
its data files, and readers (`train`, `report`, a re-decide, `--retry-failed`) read exactly
those files, never a folder listing.

Every change of a finished output writes new files under new names, then commits a new
manifest (one object: a rename on disk, a single PUT on S3), then removes the files no
manifest lists any more. A process that dies at any point leaves either the old committed
state or the new one; the files it left behind are listed by neither and are removed by the
next change. Delta Lake and Iceberg commit the same way.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
import pyarrow.parquet as pq

from alpagasus_ray.data.io import (
    DATA_DIR,
    MANIFEST,
    UnfinishedFilterOutput,
    join,
    read_json,
    write_atomic,
)
from alpagasus_ray.data.schema import DECISION

FORMAT_VERSION = 2  # 2: the manifest lists its data files; 1 (unversioned) did not


def decision_of(path: str) -> str:
    """The decision a data file holds, from its `decision=` folder."""
    folder = path.rsplit("/", 2)[-2]
    key, _, value = folder.partition("=")
    if key != DECISION:
        raise ValueError(f"{path} is not in a {DECISION}= folder")
    return value


def file_entries(fs: fsspec.AbstractFileSystem, root: str, files: list[str]) -> list[dict]:
    """A manifest's `files`: each data file's path under the output, decision and rows (from
    its footer: no data is read)."""
    data = join(root, DATA_DIR) + "/"
    entries = []
    for path in sorted(files):
        with fs.open(path, "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        rel = path[len(data) :] if path.startswith(data) else path
        entries.append({"path": rel, "decision": decision_of(path), "rows": rows})
    return entries


def counts_of(entries: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["decision"]] = counts.get(entry["decision"], 0) + entry["rows"]
    return counts


def commit(fs: fsspec.AbstractFileSystem, root: str, manifest: dict[str, Any]) -> None:
    """Make `manifest` the output's state, in one atomic write."""
    body = {"format_version": FORMAT_VERSION, **manifest}
    data = (json.dumps(body, indent=2, default=str) + "\n").encode()
    write_atomic(fs, join(root, MANIFEST), data)


def read_manifest(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> dict[str, Any] | None:
    """The committed manifest, or None when there is none; an older format is refused."""
    try:
        manifest = read_json(fs, join(root, MANIFEST))
    except FileNotFoundError:
        return None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UnfinishedFilterOutput(
            f"{uri} was written by another version of alpagasus-ray (manifest format "
            f"{manifest.get('format_version', 1)}, this one reads {FORMAT_VERSION}); rerun "
            "the filter into a new output"
        )
    return manifest


def committed(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> dict[str, Any]:
    """The manifest of a complete output; anything else is refused with one line."""
    manifest = read_manifest(fs, root, uri)
    if manifest is None:
        raise UnfinishedFilterOutput(
            f"{uri} has no {MANIFEST}: not a finished filter output (rerun the filter to "
            "complete it)"
        )
    if manifest.get("status") != "complete":
        raise UnfinishedFilterOutput(
            f"{uri}: the filter output's manifest says status {manifest.get('status')!r}, "
            "not 'complete'; fix or rerun the filter first"
        )
    return manifest


def listed_files(root: str, manifest: dict[str, Any], decisions: tuple[str, ...] = ()) -> list:
    """The data files `manifest` lists (of `decisions` only, when given), as full paths."""
    data = join(root, DATA_DIR)
    entries = manifest.get("files", [])
    return [join(data, e["path"]) for e in entries if not decisions or e["decision"] in decisions]


def data_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Every `.parquet` file under the output's own `data/`: what its writer lists to take
    stock of an unfinished run, or to find what no manifest lists; never what a reader
    reads."""
    data = join(root, DATA_DIR)
    return [f for f in fs.find(data) if f.endswith(".parquet")] if fs.exists(data) else []


def unlisted(fs: fsspec.AbstractFileSystem, root: str, live: list[str]) -> list[str]:
    """The data files of this output that `live` (the committed state) does not list: what
    an earlier change wrote and then replaced, or left behind when it died."""
    keep = {p.rstrip("/") for p in live}
    return [f for f in data_files(fs, root) if f not in keep]


def remove_files(fs: fsspec.AbstractFileSystem, paths: list[str]) -> None:
    for path in paths:
        fs.rm(path)


def remove_unlisted(fs: fsspec.AbstractFileSystem, root: str, live: list[str]) -> int:
    """Remove what `unlisted` finds; returns how many files."""
    stale = unlisted(fs, root, live)
    remove_files(fs, stale)
    return len(stale)
