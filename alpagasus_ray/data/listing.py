"""The input's files, each with the format it is read in, found before anything is read.

Every file under the input is data in a format we read, metadata of a layout we know (a
`datasets` folder's JSON, Spark's `_SUCCESS`, `.crc` files), or refused by name: a file is
never passed over in silence. With `input.on_unreadable_file: skip`, a refused file is
listed as skipped instead, and the manifest names it."""

from __future__ import annotations

import json
import posixpath
from typing import Any, NamedTuple

from alpagasus_ray.core.config import InputConfig, StorageConfig
from alpagasus_ray.data.formats import (
    DATASETS_DICT,
    DATASETS_INFO,
    DATASETS_STATE,
    READ_FORMATS,
    FileFormat,
    format_of,
    is_metadata,
)
from alpagasus_ray.data.io import filesystem


class Listing(NamedTuple):
    """What `list_input_files` found: the files to read, in order, with their formats, and
    those skipped (path, rows 0, why), which the manifest lists with the unreadable ones."""

    fs: Any
    files: list[str]
    formats: dict[str, FileFormat]
    skipped: list[dict[str, Any]]


def list_input_files(cfg: InputConfig, storage: StorageConfig) -> Listing:
    """The input's files: a file, a folder searched recursively, or a glob; `ValueError`
    naming the first file that is none of the formats read (unless skipped), or a folder
    that mixes columnar and record files."""
    fs, path = filesystem(cfg.uri, storage)
    if any(ch in path for ch in "*?["):
        found = [f for f in sorted(fs.glob(path)) if fs.isfile(f)]
    elif fs.isdir(path):
        found = sorted(f for f in fs.find(path))
    elif fs.exists(path):
        found = [path]
    else:
        raise FileNotFoundError(f"input {cfg.uri} does not exist")
    formats, refused = _classify(fs, found, cfg.format)
    if refused and cfg.on_unreadable_file != "skip":
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        path, why = refused[0]
        raise ValueError(
            f"{path}{more}: {why} (alpagasus-ray reads {READ_FORMATS}); remove it, name the "
            "format with input.format, or skip such files with input.on_unreadable_file=skip"
        )
    if not formats:
        none = f": {len(refused)} of no input format, e.g. {refused[0][0]}" if refused else ""
        raise FileNotFoundError(f"no input files found at {cfg.uri}{none}")
    _check_one_family(cfg.uri, formats)
    skipped = [{"path": p, "rows": 0, "error": why} for p, why in refused]
    return Listing(fs, list(formats), formats, skipped)


def _classify(
    fs: Any, found: list[str], declared: str
) -> tuple[dict[str, FileFormat], list[tuple[str, str]]]:
    """(format by data file, in order; (file, why) for each file that is none)."""
    shards = _datasets_shards(fs, found)
    formats: dict[str, FileFormat] = {}
    refused: list[tuple[str, str]] = []
    for path in found:
        folder, name = posixpath.split(path)
        if folder in shards:
            if path in shards[folder]:
                formats[path] = FileFormat("arrow")
            elif name not in (DATASETS_STATE, DATASETS_INFO):
                refused.append((path, f"a datasets folder's {DATASETS_STATE} does not list it"))
            continue
        if name == DATASETS_DICT or is_metadata(path):
            continue
        fmt = format_of(path, declared)
        if fmt is None:
            refused.append((path, "not an input format"))
        else:
            formats[path] = fmt
    return formats, refused


def _datasets_shards(fs: Any, found: list[str]) -> dict[str, list[str]]:
    """The Arrow shards of each `datasets.save_to_disk` folder among `found` (a folder with
    `state.json` and `dataset_info.json`), in the order its `state.json` lists them."""
    names = set(found)
    shards: dict[str, list[str]] = {}
    for path in found:
        folder, name = posixpath.split(path)
        if name != DATASETS_STATE or posixpath.join(folder, DATASETS_INFO) not in names:
            continue
        with fs.open(path, "r") as f:
            listed = [d["filename"] for d in json.load(f).get("_data_files", [])]
        shards[folder] = [posixpath.join(folder, n) for n in listed]
        missing = [s for s in shards[folder] if s not in names]
        if missing:
            raise FileNotFoundError(f"{path} lists {missing[0]}, which is not there")
    return shards


def _check_one_family(uri: str, formats: dict[str, FileFormat]) -> None:
    """Columnar files keep their Arrow types and record files carry JSON text: one input is
    one or the other, so that every block of it is validated alike."""
    columnar = next((p for p, f in formats.items() if f.columnar), None)
    record = next((p for p, f in formats.items() if not f.columnar), None)
    if columnar and record:
        raise ValueError(
            f"input {uri} mixes columnar files ({columnar}) and record files ({record}); "
            "give each kind its own run, or convert one kind to the other"
        )
