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
from typing import Any, Literal

import fsspec
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from alpagasus_ray.core.criteria import thresholds
from alpagasus_ray.data.io import (
    DATA_DIR,
    MANIFEST,
    UnfinishedFilterOutput,
    join,
    read_json,
    write_atomic,
)
from alpagasus_ray.data.schema import DECISION
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.text.rubrics import is_paper, rubric_label

FORMAT_VERSION = 2  # 2: the manifest lists its data files; 1 (unversioned) did not


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Record):
    """One data file of the output: its path under `data/`, its decision and its rows."""

    path: str
    decision: str
    rows: int


class Redecision(_Record):
    """What a re-decision from the stored scores changed (no judge call)."""

    from_threshold: float
    keep_fraction: float | None
    changed: dict[str, int]
    judge_calls: int


class Manifest(_Record):
    """A filter output's committed state: what `train`, `report`, `export`, `calibrate`, a
    re-decision and a retry read. Its `files` are the output; its `counts` their rows by
    decision; `status` is "complete" only when the rows read are exactly those counts."""

    format_version: int = FORMAT_VERSION
    status: Literal["complete", "inconsistent"]
    rows_read: int
    counts: dict[str, int]
    invariant: str
    invariant_ok: bool
    skipped_files: list[dict[str, Any]]  # input files that could not be read, and why
    input_files: list[dict[str, Any]] = []  # each read: path, format, rows (older: none)
    # The carried columns that hold JSON text (filter/carried.py); None: written before
    # this was recorded, when every carried column of JSON input held JSON text.
    json_text_columns: list[str] | None = None
    kept_fraction: float
    duplicates: int
    judge: dict[str, Any]  # model, engine, mode, layout, rubric (its label), rubric_file
    prompt_hash: str
    engine_metrics: dict[str, Any]
    stages: list[dict[str, Any]]  # Ray Data's operators, in pipeline order
    threshold: float
    keep_fraction: float | None
    rows_per_s: float
    timings_s: dict[str, float]
    started_at: str
    attempts: list[dict[str, Any]]  # one record per run into this output, oldest first
    fingerprint: dict[str, Any]  # the input files' and the judging settings' identities
    files: list[FileEntry]
    versions: dict[str, str | None]
    config: dict[str, Any]  # the job's config, secrets masked
    redecided: Redecision | None = None
    # Not stored: set on the manifest a run returns when it found the output already
    # complete with its settings and did nothing.
    _already_complete: bool = PrivateAttr(default=False)

    @property
    def already_complete(self) -> bool:
        """The run that returned this manifest found it committed already and changed nothing."""
        return self._already_complete

    def found_complete(self) -> Manifest:
        """This manifest, as a run that found it committed with its own settings returns it."""
        self._already_complete = True
        return self

    @property
    def judged_by_stand_in(self) -> bool:
        """Its scores are the hash stand-in's (`engines/hash.py`), not ratings."""
        return self.judge.get("engine") == "hash"

    @property
    def conversation_column(self) -> str | None:
        """The input's conversation column (`input.columns.messages`), or None for rows
        read from their instruction, input and output columns."""
        return self.config.get("input", {}).get("columns", {}).get("messages")

    def to_json(self) -> bytes:
        body = self.model_dump(exclude={"redecided"} if self.redecided is None else None)
        return (json.dumps(body, indent=2, default=str) + "\n").encode()


def decision_of(path: str) -> str:
    """The decision a data file holds, from its `decision=` folder."""
    folder = path.rsplit("/", 2)[-2]
    key, _, value = folder.partition("=")
    if key != DECISION:
        raise ValueError(f"{path} is not in a {DECISION}= folder")
    return value


def file_entries(fs: fsspec.AbstractFileSystem, root: str, files: list[str]) -> list[FileEntry]:
    """A manifest's `files`: each data file's path under the output, decision and rows (from
    its footer: no data is read)."""
    data = join(root, DATA_DIR) + "/"
    entries = []
    for path in sorted(files):
        with fs.open(path, "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        rel = path[len(data) :] if path.startswith(data) else path
        entries.append(FileEntry(path=rel, decision=decision_of(path), rows=rows))
    return entries


def counts_of(entries: list[FileEntry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.decision] = counts.get(entry.decision, 0) + entry.rows
    return counts


def commit(fs: fsspec.AbstractFileSystem, root: str, manifest: Manifest) -> None:
    """Make `manifest` the output's state, in one atomic write."""
    write_atomic(fs, join(root, MANIFEST), manifest.to_json())


def read_manifest(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> Manifest | None:
    """The committed manifest, or None when there is none; another format is refused, and
    so is one that is not a manifest of this format (hand-edited, or another tool's)."""
    try:
        body = read_json(fs, join(root, MANIFEST))
    except FileNotFoundError:
        return None
    version = body.get("format_version", 1) if isinstance(body, dict) else None
    if version != FORMAT_VERSION:
        raise UnfinishedFilterOutput(
            f"{uri} was written by another version of alpagasus-ray (manifest format "
            f"{version}, this one reads {FORMAT_VERSION}); rerun the filter into a new output"
        )
    try:
        return Manifest.model_validate(body)
    except ValidationError as e:
        where = ".".join(str(p) for p in e.errors()[0]["loc"])
        raise UnfinishedFilterOutput(
            f"{uri}: its {MANIFEST} is not a valid manifest ({e.error_count()} problems, the "
            f"first at {where}: {e.errors()[0]['msg']}); rerun the filter into a new output"
        ) from None


def committed(fs: fsspec.AbstractFileSystem, root: str, uri: str) -> Manifest:
    """The manifest of a complete output; anything else is refused with one line."""
    manifest = read_manifest(fs, root, uri)
    if manifest is None:
        raise UnfinishedFilterOutput(
            f"{uri} has no {MANIFEST}: not a finished filter output (rerun the filter to "
            "complete it)"
        )
    if manifest.status != "complete":
        raise UnfinishedFilterOutput(
            f"{uri}: the filter output's manifest says status {manifest.status!r}, "
            "not 'complete'; fix or rerun the filter first"
        )
    return manifest


def listed_files(root: str, manifest: Manifest, decisions: tuple[str, ...] = ()) -> list[str]:
    """The data files `manifest` lists (of `decisions` only, when given), as full paths."""
    data = join(root, DATA_DIR)
    files = manifest.files
    return [join(data, e.path) for e in files if not decisions or e.decision in decisions]


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


def judge_record(cfg: FilterJobConfig) -> dict[str, Any]:
    """The manifest's `judge`: what judged and by which rubric (its label, and a template's
    text for the report's reader); with criteria, each criterion's, and the rule."""
    judge = cfg.judge.model_dump(include={"model", "engine", "mode", "layout", "rubric_file"})
    if cfg.judge.criteria:
        limits = thresholds(cfg.judge.criteria, cfg.filter.threshold)
        criteria = {
            name: {"rubric": rubric_label(c.rubric), "rubric_file": c.rubric_file,
                   "scale": list(c.scale), "threshold": limits[name],
                   **({} if is_paper(c.rubric) else {"rubric_text": c.rubric})}
            for name, c in cfg.judge.criteria.items()
        }  # fmt: skip
        rubric = "criteria: " + ", ".join(criteria)
        judge.update(rubric=rubric, scale=[0, 1], criteria=criteria, rule=cfg.filter.rule)
        return judge
    judge.update(rubric=rubric_label(cfg.judge.rubric), scale=list(cfg.judge.scale))
    if not is_paper(cfg.judge.rubric):  # the template itself, for the report's reader
        judge["rubric_text"] = cfg.judge.rubric
    return judge
