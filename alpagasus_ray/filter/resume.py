"""Resuming an unfinished filter output: rerunning the same command judges only the rest.

Every written row carries its file and position (`source`, `source_row`), which the readers
attach at read time. A rerun into an output that has `run.json` but no manifest:

1. refuses when the run it would continue used another input, judge, prompt or threshold
   (`run.json` keeps the first attempt's fingerprint), saying what changed;
2. removes data files the killed run left half written (unreadable Parquet) and takes the
   `engine_error` rows out of the `failed` partition, so they are judged again;
3. skips, right after the read, every row whose (file, position) is in the output already.

Ray Data's own checkpointing (`ray.data.checkpoint`) would do step 3, but it keys rows by one
column that must exist at read time and cannot retry a written row (`engine_error`); this
keeps the same principle (filter right after the read, by what the write committed) with the
output itself as the checkpoint, so there is no second store to keep consistent with it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alpagasus_ray.config import JobConfig
from alpagasus_ray.filter.duplicates import seen_in_output
from alpagasus_ray.filter.preflight import PreflightError
from alpagasus_ray.io import DATA_DIR, MANIFEST, RUN_MARKER, join, output_dataset, read_json
from alpagasus_ray.prompts import prompt_hash
from alpagasus_ray.schema import CONTENT_HASH, DUPLICATE_OF, REASON, SOURCE, SOURCE_ROW, Reason

log = logging.getLogger(__name__)

_JUDGE_KEYS = (
    "model",
    "tokenizer",
    "engine",
    "mode",
    "dimension",
    "layout",
    "chat_template",
    "max_model_len",
    "max_new_tokens",
    "min_score_mass",
    "dtype",
)
KEY_SEP = "\x1f"  # between file and position in a row key


def fingerprint(cfg: JobConfig, files: list[str]) -> dict[str, Any]:
    """What must not change between the attempts of one run, by config key."""
    listing = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    api = {}
    if cfg.judge.engine == "openai":  # what changes the judgement; not the URL, limits, prices
        api = {f"judge.api.{k}": getattr(cfg.judge.api, k) for k in ("endpoint", "top_logprobs")}
    return {
        "input.uri": cfg.input.uri,
        "input files": f"{len(files)} files (listing {listing})",
        "input.columns": cfg.input.columns.model_dump(),
        **{f"judge.{k}": getattr(cfg.judge, k) for k in _JUDGE_KEYS},
        **api,
        "prompt": prompt_hash(cfg.judge.dimension, cfg.judge.layout),
        "filter.threshold": cfg.filter.threshold,
        "filter.keep_fraction": cfg.filter.keep_fraction,
    }


DECISION_KEYS = ("filter.threshold", "filter.keep_fraction")  # re-decided without judging


def check_rerun(
    cfg: JobConfig, fs: fsspec.AbstractFileSystem, root: str, files: list[str]
) -> tuple[str, dict[str, Any] | None]:
    """What a run into an existing output does: ("fresh", None) to start afresh (empty
    output, or `overwrite`), ("resume", run) to continue an unfinished run, ("redecide", run)
    when only the decision settings of a finished run changed. Anything else is refused,
    saying what changed, since the output would mix two kinds of decisions."""
    if cfg.output.overwrite or not fs.exists(join(root, RUN_MARKER)):
        return "fresh", None
    run = read_json(fs, join(root, RUN_MARKER))
    finished = fs.exists(join(root, MANIFEST))
    start_over = "rerun with its settings, or set output.overwrite=true to start over"
    if cfg.input.limit and not finished:
        raise PreflightError(
            "resume", "input.limit", f"a run with a row limit cannot resume {cfg.output.uri}"
        )
    before, now = run.get("fingerprint") or {}, fingerprint(cfg, files)
    changed = [k for k in now if before.get(k) != now[k]]
    judged_alike = not [k for k in changed if k not in DECISION_KEYS]
    if finished and changed and judged_alike:
        return "redecide", run
    if finished:
        why = "nothing changed" if not changed else f"{changed[0]} changed"
        raise PreflightError(
            "output",
            "output.uri",
            f"{cfg.output.uri} holds a finished run ({why}; only filter.threshold or "
            "filter.keep_fraction can change without judging again); set "
            "output.overwrite=true to replace it",
        )
    if changed:
        key = changed[0]
        raise PreflightError(
            "resume",
            key,
            f"the unfinished run in {cfg.output.uri} used {before.get(key)!r}, this one "
            f"{now[key]!r}; {start_over}",
        )
    return "resume", run


def data_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    data = join(root, DATA_DIR)
    return [f for f in fs.find(data) if f.endswith(".parquet")] if fs.exists(data) else []


def remove_late_files(
    fs: fsspec.AbstractFileSystem, root: str, attempt: str, kept: set[str]
) -> int:
    """Remove the data files that an earlier attempt's tasks finished after this attempt
    took stock of the output (a killed driver's write tasks can outlive it by a moment):
    their rows were not in the output then, so this attempt judged and wrote them again.
    This attempt's own files start with `attempt`; `kept` is what it found at start."""
    late = [
        f
        for f in data_files(fs, root)
        if f not in kept and not f.rsplit("/", 1)[-1].startswith(attempt)
    ]
    for path in late:
        fs.rm(path)
    if late:
        log.info("removed %d data files written late by an earlier attempt", len(late))
    return len(late)


def resume_state(
    fs: fsspec.AbstractFileSystem, root: str
) -> tuple[pa.Array, dict[str, int], set[str], dict[str, str]]:
    """Make the unfinished output consistent (steps 2 of the module docstring) and return
    the keys of the rows it holds, what was cleaned up, the data files it kept, and the
    contents judged so far (for the duplicates still to come, `filter/duplicates.py`)."""
    files = data_files(fs, root)
    removed = retried = 0
    for path in files:
        try:
            with fs.open(path, "rb") as f:
                table = pq.read_table(f)
        except Exception:  # noqa: BLE001 - cut off by the kill: its rows are judged again
            fs.rm(path)
            removed += 1
            continue
        if "decision=failed" in path and REASON in table.column_names:
            transient = pc.fill_null(
                pc.equal(table.column(REASON), Reason.ENGINE_ERROR.value), False
            )
            n = pc.sum(transient).as_py() or 0
            if n:
                retried += n
                keep = table.filter(pc.invert(transient))
                if keep.num_rows:
                    with fs.open(path, "wb") as f:
                        pq.write_table(keep, f)
                else:
                    fs.rm(path)
    table = None
    if files:
        dataset = output_dataset(fs, root)
        extra = [c for c in (CONTENT_HASH, DUPLICATE_OF) if c in dataset.schema.names]
        table = dataset.to_table(columns=[SOURCE, SOURCE_ROW, *extra])
    keys = row_keys(table) if table is not None else pa.array([], pa.string())
    if pc.sum(pc.is_null(keys)).as_py():
        raise PreflightError(
            "resume", "output.uri", f"{root} was written without row positions (an older "
            "version); set output.overwrite=true to start over"
        )  # fmt: skip
    stats = {
        "rows_kept": len(keys),
        "partial_files_removed": removed,
        "engine_errors_retried": retried,
    }
    log.info("resuming %s: %s", root, stats)
    seen = seen_in_output(
        table if table is not None and DUPLICATE_OF in table.column_names else None
    )
    return keys, stats, set(data_files(fs, root)), seen


def row_keys(table: pa.Table, source: str = SOURCE, position: str = SOURCE_ROW) -> pa.Array:
    """`file<sep>position` for each row: its identity from the read on."""
    positions = pc.cast(table.column(position), pa.string())
    return pc.binary_join_element_wise(table.column(source), positions, KEY_SEP).combine_chunks()
