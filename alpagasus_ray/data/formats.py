"""What an input file is, decided by its name (or `input.format`), never by hope.

Two families: *columnar* files (Parquet, Arrow IPC, a `datasets` folder's shards) keep
their Arrow columns; *record* files (a JSON array, JSON lines, CSV, TSV) become one row per
record holding the record's text, so that a broken record is one quarantined row. Record
files may be gzip, zstd, bz2 or xz compressed; a file that is none of these is refused by
name. Pure: no Ray, no I/O."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd",
                ".bz2": "bz2", ".xz": "xz"}  # fmt: skip
EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".csv": "csv",
    ".tsv": "tsv",
}
COLUMNAR = frozenset({"parquet", "arrow"})
READ_FORMATS = (
    "Parquet, Arrow IPC, JSON, JSON lines, CSV and TSV files (the last four also .gz, .zst, "
    ".bz2 or .xz) and datasets save_to_disk folders"
)
# A datasets `save_to_disk` folder: these two beside the Arrow shards that `state.json` lists.
DATASETS_STATE, DATASETS_INFO = "state.json", "dataset_info.json"
DATASETS_DICT = "dataset_dict.json"  # beside a DatasetDict's split folders


@dataclass(frozen=True)
class FileFormat:
    """How one input file is read: its kind and the compression it is read through."""

    kind: str  # parquet | arrow | json | csv | tsv
    compression: str | None = None

    @property
    def columnar(self) -> bool:
        return self.kind in COLUMNAR

    @property
    def name(self) -> str:
        return self.kind + (f"+{self.compression}" if self.compression else "")


def compression_of(path: str) -> tuple[str, str | None]:
    """(the name without its compression suffix, the compression) of a path."""
    stem, ext = posixpath.splitext(path)
    if ext.lower() in COMPRESSIONS:
        return stem, COMPRESSIONS[ext.lower()]
    return path, None


def format_of(path: str, declared: str = "auto") -> FileFormat | None:
    """The format a file is read in: `declared` when the user named one (`input.format`),
    else its extension's; None for a file that is none of the formats read."""
    stem, compression = compression_of(path)
    kind = "json" if declared == "jsonl" else declared
    if kind == "auto":
        kind = EXTENSIONS.get(posixpath.splitext(stem)[1].lower())
    if kind is None or (compression and kind in COLUMNAR):
        return None  # a compressed Parquet or Arrow file is not something a writer makes
    return FileFormat(kind, compression)


def is_metadata(path: str) -> bool:
    """A file that layouts we know keep beside their data and that holds no rows: Spark's
    and Hadoop's `_SUCCESS`, `_metadata` and `.crc` files, hidden files (`.DS_Store`)."""
    name = posixpath.basename(path.rstrip("/"))
    return name.startswith(("_", ".")) or name.endswith(".crc")


def holds_json_text(source: str | None) -> bool:
    """Whether a row read from `source` carries its extra columns as JSON text (a record
    file's), rather than as the Arrow values a columnar file has."""
    found = format_of(str(source or ""))
    return found is None or not found.columnar
