"""Export a finished filter output for a fine-tuning stack: Alpaca JSON, chat `messages`
JSONL, one Parquet file or a Hugging Face `datasets` folder.

Only the files the committed manifest lists are read (a folder listing may hold a dead
run's leftovers), one record batch at a time, so a million-row export holds one batch in
memory. The destination appears whole or not at all: it is written to a temporary file
and renamed (or, on S3, uploaded once) at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import fsspec
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from alpagasus_ray.core.config import StorageConfig
from alpagasus_ray.core.errors import ExportRefused
from alpagasus_ray.data.formats import holds_json_text
from alpagasus_ray.data.io import filesystem, is_local, output_dataset
from alpagasus_ray.data.schema import (
    DECISIONS,
    INPUT,
    SCORE,
    SOURCE,
    TRIPLE,
    Decision,
)
from alpagasus_ray.engines.hash import STAND_IN_NOTE
from alpagasus_ray.filter.carried import extra_names
from alpagasus_ray.filter.export_rows import TEXT_FORMATS, RowShaper
from alpagasus_ray.filter.manifest import Manifest, committed, listed_files
from alpagasus_ray.filter.redecide import keep_threshold
from alpagasus_ray.filter.resume import INPUT_FILES

FORMATS = (*TEXT_FORMATS, "hf", "parquet")
SELECTIONS = (*DECISIONS, "all")
JUDGED = (Decision.KEPT.value, Decision.REJECTED.value)  # the rows that have a score


def export(
    uri: str,
    fmt: str,
    to: str,
    decision: str = Decision.KEPT.value,
    min_score: float | None = None,
    keep_fraction: float | None = None,
    extra_columns: bool = False,
    system_prompt: str | None = None,
    overwrite: bool = False,
    storage: StorageConfig | None = None,
) -> dict[str, Any]:
    """Write the selected rows of the finished output at `uri` to `to` in `fmt`; returns
    {rows, format, to}. `min_score`/`keep_fraction` select among the kept and rejected rows
    by their stored scores (no judging), instead of by `decision`."""
    storage = storage or StorageConfig()
    if fmt not in FORMATS:
        raise ExportRefused(f"export: unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if decision not in SELECTIONS:
        raise ExportRefused(f"export: --decision {decision!r}; one of {', '.join(SELECTIONS)}")
    if min_score is not None and keep_fraction is not None:
        raise ExportRefused("export: give --min-score or --keep-fraction, not both")
    if system_prompt and fmt not in ("messages", "sharegpt"):
        raise ExportRefused("export: --system-prompt is for --format messages or sharegpt")
    if keep_fraction is not None and not 0 < keep_fraction <= 1:
        raise ExportRefused(f"export: --keep-fraction {keep_fraction:g} is not in (0, 1]")
    fs, root = filesystem(uri, storage)
    manifest = committed(fs, root, uri)
    if manifest.judged_by_stand_in:
        raise ExportRefused(f"export: {uri}: {STAND_IN_NOTE}; there is nothing to export")
    out_fs, dest = filesystem(to, storage)
    check_destination(fs, root, out_fs, dest, to, fmt, overwrite)
    if fmt == "hf":
        require_datasets()

    by_score = min_score is not None or keep_fraction is not None
    decisions = JUDGED if by_score else () if decision == "all" else (decision,)
    files = listed_files(root, manifest, decisions)
    # A conversation row's turns are the row itself: read, whichever file has them.
    chat = manifest.conversation_column
    every = extra_columns or bool(chat)
    source = output_dataset(fs, root, files, every_column=every) if files else None
    extras = extra_names(source.schema) if source is not None and extra_columns else []
    if chat and source is not None and chat in source.schema.names and chat not in extras:
        extras.append(chat)
    where = None
    if source is not None and by_score:
        if min_score is None:
            scores = source.to_table(columns=[SCORE]).column(SCORE).combine_chunks()
            try:
                min_score = keep_threshold(scores, keep_fraction)
            except ValueError as e:
                raise ExportRefused(f"export --keep-fraction: {e}") from None
        where = pc.field(SCORE) >= min_score
    batches = rows_of(source, extras, where) if source is not None else iter(())
    schema = output_schema(source, extras)

    # On disk, beside the destination, so that the last step is a rename.
    near = os.path.dirname(os.path.abspath(dest)) if is_local(out_fs) else None
    if near:
        os.makedirs(near, exist_ok=True)
        remove_dead_exports(near, work_name(dest))
    with tempfile.TemporaryDirectory(prefix=work_prefix(dest), dir=near) as tmp:
        local = os.path.join(tmp, "export")
        shape = RowShaper(fmt, extras, json_text_of(manifest, extras), system_prompt, chat)
        rows = write_local(fmt, local, batches, schema, shape)
        publish(out_fs, local, dest, fmt == "hf", overwrite)
    return {"rows": rows, "format": fmt, "to": to}


def output_schema(source: pads.Dataset | None, extras: list[str]) -> pa.Schema:
    fields = [pa.field(c, pa.string()) for c in TRIPLE]
    if source is not None:
        fields += [source.schema.field(n) for n in extras]
    return pa.schema(fields)


def rows_of(source: pads.Dataset, extras: list[str], where: Any) -> Iterator[pa.RecordBatch]:
    """The selected rows, batch by batch; a null input becomes "" (Alpaca's convention)."""
    columns = [*TRIPLE, SOURCE, *extras]
    for batch in source.to_batches(columns=columns, filter=where):
        if batch.num_rows:
            table = pa.Table.from_batches([batch])
            filled = pc.fill_null(table.column(INPUT).cast(pa.string()), "")
            yield table.set_column(table.column_names.index(INPUT), INPUT, filled).to_batches()[0]


def json_text_of(manifest: Manifest, extras: list[str]) -> frozenset[str]:
    """The carried columns the output stores as JSON text: as its manifest says, or, for an
    output written before manifests said it, every one when its input was record files."""
    if manifest.json_text_columns is not None:
        return frozenset(manifest.json_text_columns)
    inputs = list(manifest.fingerprint.get(INPUT_FILES, {}))
    return frozenset(extras) if inputs and holds_json_text(inputs[0]) else frozenset()


def write_local(
    fmt: str,
    path: str,
    batches: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    shape: RowShaper,
) -> int:
    """Write the export to the local `path` as it streams in; returns the rows written."""
    rows = 0
    if fmt in ("parquet", "hf"):
        target = path if fmt == "parquet" else path + ".parquet"
        with pq.ParquetWriter(target, schema) as writer:
            for batch in batches:
                writer.write_batch(batch.drop_columns([SOURCE]).cast(schema))
                rows += batch.num_rows
        if fmt == "hf":
            save_hf(target, path)
        return rows
    with open(path, "w", encoding="utf-8") as f:
        f.write("[" if fmt == "alpaca" else "")
        for batch in batches:
            for row in batch.to_pylist():
                text = json.dumps(shape(row), ensure_ascii=False)
                f.write(("\n" if not rows else ",\n") + text if fmt == "alpaca" else text + "\n")
                rows += 1
        f.write("\n]\n" if fmt == "alpaca" else "")
    return rows


def require_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise ExportRefused(
            "export --format hf needs Hugging Face datasets: pip install 'alpagasus-ray[export]'"
        ) from None


def save_hf(parquet: str, folder: str) -> None:
    """A `datasets.load_from_disk` folder from the streamed Parquet file (memory-mapped
    Arrow, not loaded into memory); its cache stays in the temporary folder."""
    import datasets

    cache = os.path.join(os.path.dirname(folder), "hf-cache")
    ds = datasets.Dataset.from_parquet(parquet, cache_dir=cache)
    ds.save_to_disk(folder)


# An export's work folder beside its destination: `.alpagasus-export-PID-NAME.XXXXXXXX`
# (tempfile's 8 random characters), so that the next export to NAME knows a dead one's.
WORK_FOLDER = re.compile(r"^\.alpagasus-export-(\d+)-(.+)\.[a-z0-9_]{8}$")


def work_name(dest: str) -> str:
    """The target's name as its work folder carries it (`dir/` and `dir` alike)."""
    return os.path.basename(dest.rstrip("/"))


def work_prefix(dest: str) -> str:
    return f".alpagasus-export-{os.getpid()}-{work_name(dest)}."


def remove_dead_exports(folder: str, name: str) -> None:
    """Remove the work folders that exports to `name` left when they were killed (their
    process is gone); a live export's, or one to another name, is not touched."""
    for entry in os.listdir(folder):
        found = WORK_FOLDER.match(entry)
        if found and found.group(2) == name and not psutil.pid_exists(int(found.group(1))):
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def check_destination(
    fs: fsspec.AbstractFileSystem,
    root: str,
    out_fs: fsspec.AbstractFileSystem,
    dest: str,
    to: str,
    fmt: str,
    overwrite: bool,
) -> None:
    """Refuse to write into the filter output (its files are the manifest's alone), over an
    existing destination without `overwrite`, or over a folder that is not an export."""
    same = is_local(fs) == is_local(out_fs)
    norm = (lambda p: os.path.realpath(p)) if is_local(out_fs) else (lambda p: p.rstrip("/"))
    if same and (norm(dest) + "/").startswith(norm(root) + "/"):
        raise ExportRefused(f"export: --to {to} is inside the filter output; write elsewhere")
    if not out_fs.exists(dest):
        return
    if not overwrite:
        raise FileExistsError(f"export: {to} exists; pass --overwrite to replace it")
    if out_fs.isdir(dest) and not (fmt == "hf" and out_fs.exists(f"{dest}/dataset_info.json")):
        raise ExportRefused(f"export: {to} is a folder that is not a datasets export; not replaced")


def publish(
    out_fs: fsspec.AbstractFileSystem, local: str, dest: str, folder: bool, overwrite: bool
) -> None:
    """Put the finished local export at `dest`: a rename in its own folder on disk (the
    name never holds a half file), one upload on S3 once it is complete."""
    if not is_local(out_fs):
        if overwrite and out_fs.exists(dest):
            out_fs.rm(dest, recursive=True)
        out_fs.put(local, dest, recursive=folder)
        return
    if folder and os.path.isdir(dest):
        shutil.rmtree(dest)
    os.replace(local, dest)  # the temporary folder is beside `dest`: one rename
