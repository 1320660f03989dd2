"""Resuming an unfinished filter output: rerunning the same command judges only the rest.

Every written row carries its file and position (`source`, `source_row`), which the readers
attach at read time. A rerun into an output that has `run.json` but no manifest:

1. refuses when the run it would continue used another input, judge, prompt or threshold
   (`run.json` keeps the first attempt's fingerprint), saying what changed;
2. removes data files the killed run left half written (unreadable Parquet) and takes the
   `engine_error` rows out of the `failed` partition, so they are judged again;
3. skips, right after the read, every row whose (file, position) is in the output already.

`output.retry_failed=true` on a finished output does steps 2 and 3 from the files its
manifest lists, without changing any of them: the new attempt's files and a new manifest
replace the old state in one commit (`filter/manifest.py`).

Ray Data's own checkpointing (`ray.data.checkpoint`) would do step 3, but it keys rows by one
column that must exist at read time and cannot retry a written row (`engine_error`); this
keeps the same principle (filter right after the read, by what the write committed) with the
output itself as the checkpoint, so there is no second store to keep consistent with it.
"""

from __future__ import annotations

import logging
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.core.criteria import score_column, thresholds
from alpagasus_ray.data.io import RUN_MARKER, join, output_dataset, read_json
from alpagasus_ray.data.listing import Listing
from alpagasus_ray.data.schema import CONTENT_HASH, DUPLICATE_OF, REASON, SOURCE, SOURCE_ROW, Reason
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.criteria import criteria_types, prompt_identity
from alpagasus_ray.filter.duplicates import SETTLED_SUFFIX, seen_in_output
from alpagasus_ray.filter.manifest import (
    Manifest,
    data_files,
    listed_files,
    read_manifest,
    remove_unlisted,
)
from alpagasus_ray.filter.preflight import PreflightError
from alpagasus_ray.text.rubrics import PAPER_SCALE, is_paper, rubric_label

log = logging.getLogger(__name__)

_JUDGE_KEYS = (
    "model",
    "tokenizer",
    "engine",
    "mode",
    "layout",
    "chat_template",
    "max_model_len",
    "max_new_tokens",
    "min_score_mass",
    "dtype",
)
KEY_SEP = "\x1f"  # between file and position in a row key


def file_identity(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """What tells a file's content apart without reading it: size and ETag or version id on
    S3, size and modification time on disk."""
    info = fs.info(path)
    tag = info.get("VersionId") or info.get("ETag") or info.get("mtime") or info.get("LastModified")
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def fingerprint(cfg: FilterJobConfig, listing: Listing) -> dict[str, Any]:
    """What must not change between the attempts of one run, by config key; the input
    files' identities too, so that a resumed run judges the input it was started on."""
    fs, files = listing.fs, listing.files
    extra: dict[str, Any] = {}
    if cfg.judge.engine == "openai":  # what changes the judgement; not the URL, limits, prices
        extra = {f"judge.api.{k}": getattr(cfg.judge.api, k) for k in ("endpoint", "top_logprobs")}
    for key in ("stop_after_score_line", "structured_score"):  # named only when on, so
        if getattr(cfg.judge, key):  # that earlier runs still resume
            extra[f"judge.{key}"] = True
    if cfg.judge.turns == "each":  # the same: outputs from before `turns` rerun as they did
        extra.update({"judge.turns": "each", "judge.turn_aggregate": cfg.judge.turn_aggregate})
    rubric = cfg.judge.rubric  # a paper rubric under its key of old; a template by its hash
    if cfg.judge.criteria:  # what judges, and apart from it what decides (DECISION_KEYS)
        extra["judge.criteria"] = {n: {"rubric": rubric_label(c.rubric), "scale": list(c.scale)}
                                   for n, c in cfg.judge.criteria.items()}  # fmt: skip
    else:
        extra["judge.dimension" if is_paper(rubric) else "judge.rubric"] = rubric_label(rubric)
    if cfg.judge.scale != PAPER_SCALE:
        extra["judge.scale"] = list(cfg.judge.scale)
    return {
        "input.uri": cfg.input.uri,
        INPUT_FILES: {path: file_identity(fs, path) for path in files},
        "input.columns": cfg.input.columns.model_dump(),
        **{f"judge.{k}": getattr(cfg.judge, k) for k in _JUDGE_KEYS},
        **extra,
        "prompt": prompt_identity(cfg.judge),
        **decision_settings(cfg),
    }


def decision_settings(cfg: FilterJobConfig) -> dict[str, Any]:
    """The settings that decide the rows from their scores (DECISION_KEYS), as a run's
    fingerprint holds them: what a re-decision may change without judging again."""
    decided: dict[str, Any] = {}
    if cfg.judge.criteria:
        decided[CRITERIA_THRESHOLDS] = thresholds(cfg.judge.criteria, cfg.filter.threshold)
        decided["filter.rule"] = cfg.filter.rule
    decided["filter.threshold"] = cfg.filter.threshold
    decided["filter.keep_fraction"] = cfg.filter.keep_fraction
    return decided


def _same(before: Any, now: Any) -> bool:
    """Equal, a key a section of settings lacks read as unset: a column map written before
    a key was added (`input.columns.messages`) is the same map with that key unset."""
    if isinstance(before, dict) and isinstance(now, dict):
        return {k: v for k, v in before.items() if v is not None} == {
            k: v for k, v in now.items() if v is not None
        }
    return before == now


INPUT_FILES = "input files"
KNOWN_KEY = "_key"  # a retried row's key beside its criteria judged already
REDECIDED_PREFIX = "redecided-"  # the files of a re-decision (filter/redecide.py)


def is_derived(name: str, settling: bool) -> bool:
    """A re-decision's file, or settled copies while copies are still left to settle (the
    settling was cut off; once done, its files are complete and stay)."""
    return name.startswith(REDECIDED_PREFIX) or (settling and name.endswith(SETTLED_SUFFIX))


CRITERIA_THRESHOLDS = "criteria thresholds"
# Re-decided without judging.
DECISION_KEYS = ("filter.threshold", "filter.keep_fraction", CRITERIA_THRESHOLDS, "filter.rule")


def _what_changed(key: str, before: Any, now: Any) -> str:
    """One clause naming what changed: for the input files, the first file added, removed
    or changed since the first attempt."""
    if key != INPUT_FILES or not isinstance(before, dict):
        return f"{key} was {before!r}, now {now!r}"
    for path in sorted(set(before) | set(now)):
        if path not in now:
            return f"input file {path} is gone"
        if path not in before:
            return f"input file {path} is new"
        if before[path] != now[path]:
            return f"input file {path} changed (size:version {before[path]} -> {now[path]})"
    return f"{key} changed"


def check_rerun(
    cfg: FilterJobConfig, fs: fsspec.AbstractFileSystem, root: str, now: dict[str, Any]
) -> tuple[str, Manifest | dict[str, Any] | None]:
    """What a run whose `fingerprint` is `now` does in an existing output: ("fresh", None)
    to start afresh (empty output, or `overwrite`), ("resume", run) to continue an
    unfinished run, ("redecide", manifest) when only the decision settings of a finished
    run changed, ("retry", manifest) for `output.retry_failed` on a finished run, ("done",
    manifest) for a finished run asked for again with the same settings: nothing to do (a
    scheduler's retry of a task that succeeded, a rerun after a kill that came just after
    the commit), but the files its manifest no longer lists are removed. Anything else is
    refused, saying what changed, since the output would mix two kinds of decisions."""
    if cfg.output.overwrite or not fs.exists(join(root, RUN_MARKER)):
        return "fresh", None
    manifest = read_manifest(fs, root, cfg.output.uri)
    run = manifest if manifest is not None else read_json(fs, join(root, RUN_MARKER))
    start_over = "rerun with its settings, or set output.overwrite=true to start over"
    if cfg.input.limit and manifest is None:
        raise PreflightError(
            "resume", "input.limit", f"a run with a row limit cannot resume {cfg.output.uri}"
        )
    before = (manifest.fingerprint if manifest is not None else run.get("fingerprint")) or {}
    changed = [k for k in now if not _same(before.get(k), now[k])]
    judged_alike = not [k for k in changed if k not in DECISION_KEYS]
    if manifest is not None and cfg.output.retry_failed and not changed:
        return "retry", manifest
    if manifest is not None and changed and judged_alike and not cfg.output.retry_failed:
        return "redecide", manifest
    if manifest is not None and not changed:
        remove_unlisted(fs, root, listed_files(root, manifest))  # a change killed after commit
        if manifest.status == "complete":
            return "done", manifest
        raise PreflightError(
            "output",
            "output.uri",
            f"{cfg.output.uri} holds a finished run that did not add up ({manifest.invariant}); "
            "set output.overwrite=true to judge it again",
        )
    if manifest is not None:
        why = _what_changed(changed[0], before.get(changed[0]), now[changed[0]])
        raise PreflightError(
            "output",
            "output.uri",
            f"{cfg.output.uri} holds a finished run ({why}; only filter.threshold, "
            "filter.keep_fraction, filter.rule and the criteria's thresholds can change "
            "without judging again, and "
            "output.retry_failed=true judges its engine_error rows again with the same "
            "settings); set output.overwrite=true to replace it",
        )
    if changed:
        key = changed[0]
        raise PreflightError(
            "resume",
            key,
            f"the unfinished run in {cfg.output.uri} cannot go on: "
            f"{_what_changed(key, before.get(key), now[key])}; {start_over}",
        )
    return "resume", run


def attempt_files(fs: fsspec.AbstractFileSystem, root: str, attempt: str) -> list[str]:
    """The data files this attempt wrote: their names start with its prefix."""
    return [f for f in data_files(fs, root) if f.rsplit("/", 1)[-1].startswith(attempt)]


def drop_derived(fs: fsspec.AbstractFileSystem, files: list[str]) -> list[str]:
    """Remove what an unfinished run derived from its rows at the end of an attempt but did
    not finish (a keep fraction's re-decided files, settled copies while some are still
    unsettled) and return the other files: such files stand beside their sources, and the
    next attempt derives them again (copies are found again, without a judge call)."""
    settling = any("/decision=duplicate/" in f for f in files)  # copies left to settle
    derived = [f for f in files if is_derived(f.rsplit("/", 1)[-1], settling)]
    for path in derived:
        fs.rm(path)
    gone = set(derived)
    return [f for f in files if f not in gone]


def _engine_errors(path: str, table: pa.Table) -> pa.Array | None:
    """Which rows of a `failed` file the engine failed on (retried), or None."""
    if "decision=failed" not in path or REASON not in table.column_names:
        return None
    mask = pc.fill_null(pc.equal(table.column(REASON), Reason.ENGINE_ERROR.value), False)
    return mask if pc.any(mask).as_py() else None


def resume_state(
    fs: fsspec.AbstractFileSystem,
    root: str,
    files: list[str],
    attempt: str,
    committed: bool,
    num_cpus: float = 0.25,
    judge: JudgeConfig | None = None,
) -> tuple[Any, dict[str, int], set[str], Any, Any]:
    """Take stock of an output before judging the rest: return an object ref to the keys of
    the rows it holds, what was cleaned up (`rows_kept` the number of those keys), the data
    files that stay, an object ref to the contents judged so far (for the duplicates
    still to come, `filter/duplicates.py`), and with `judge.criteria` one to the criteria
    the retried rows had judged (or None), which they keep (`stages.skip_done`).

    Ray tasks do the reading, a task a file, then one for the keys, so the driver never
    holds a file's rows: `engine_error` rows are taken out of the `failed` files, so they
    are judged again. In an unfinished output (step 2 of the module docstring), which no
    reader trusts, a file cut off by the kill is removed and a failed file is rewritten in
    place (whole or, cut off again, removed at the next attempt). In a committed one
    (`committed`: retry-failed), no file is touched: the failed rows that stay go to a new
    file of this attempt, and the old file leaves the output with the next commit."""
    import ray

    if not committed:
        files = drop_derived(fs, files)
    check = ray.remote(num_cpus=num_cpus)(_take_stock_of_file)
    targets = [
        f"{path.rsplit('/', 1)[0]}/{attempt}_retained_{i}.parquet" if committed else path
        for i, path in enumerate(files)
    ]
    pairs = zip(files, targets, strict=True)
    kept_columns = tuple(criteria_types(judge)) if judge is not None else ()
    checked = ray.get([check.remote(fs, path, target, committed, kept_columns)
                       for path, target in pairs])  # fmt: skip
    fs.invalidate_cache()  # the tasks wrote and removed files: cached S3 listings are stale
    live = [path for path, _, _, _ in checked if path is not None]
    known = [k for _, _, _, k in checked if k is not None and k.num_rows]
    stock = ray.remote(num_cpus=num_cpus, num_returns=3)(_keys_of_output)
    keys, seen, summary = stock.remote(fs, root, live)
    rows, unplaced = ray.get(summary)
    if unplaced:
        raise PreflightError(
            "resume", "output.uri", f"{root} was written without row positions (an older "
            "version); set output.overwrite=true to start over"
        )  # fmt: skip
    stats = {
        "rows_kept": rows,
        "partial_files_removed": sum(removed for _, removed, _, _ in checked),
        "engine_errors_retried": sum(retried for _, _, retried, _ in checked),
    }
    table = pa.concat_tables(known, promote_options="permissive") if known else None
    if kept_columns:  # judge.criteria: the retried rows' criteria judged already
        scores = [score_column(name) for name in judge.criteria]
        valid = [pc.is_valid(table.column(c)) for c in scores if table and c in table.column_names]
        stats["criterion_scores_reused"] = sum(pc.sum(v).as_py() or 0 for v in valid)
    log.info("resuming %s: %s", root, stats)
    return keys, stats, set(live), seen, (ray.put(table) if table is not None else None)


def _take_stock_of_file(
    fs: fsspec.AbstractFileSystem,
    path: str,
    target: str,
    committed: bool,
    kept_columns: tuple[str, ...] = (),
) -> tuple[str | None, int, int, pa.Table | None]:
    """One data file at a resume: (the file that holds its rows now, or None; 1 if it was
    removed as cut off; the `engine_error` rows taken out; their keys and `kept_columns`,
    the criteria judged already). A file cut off by a kill has no Parquet footer, so only
    `failed` files, which may be rewritten, are read whole."""
    whole = "decision=failed" in path
    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f) if whole else pq.read_metadata(f)
    except Exception:  # noqa: BLE001 - cut off by the kill: its rows are judged again
        if committed:
            raise
        if fs.exists(path):  # gone already if Ray runs this task again
            fs.rm(path)
        return None, 1, 0, None
    transient = _engine_errors(path, table) if whole else None
    if transient is None:
        return path, 0, 0, None
    keep = table.filter(pc.invert(transient))
    retried = table.num_rows - keep.num_rows
    again = table.filter(transient)
    kept = {c: again.column(c) for c in kept_columns if c in again.column_names}
    known = pa.table({KNOWN_KEY: row_keys(again), **kept})
    if keep.num_rows:
        with fs.open(target, "wb") as f:
            pq.write_table(keep, f)
        return target, 0, retried, known
    if not committed:
        fs.rm(path)
    return None, 0, retried, known


def _keys_of_output(
    fs: fsspec.AbstractFileSystem, root: str, live: list[str]
) -> tuple[pa.Array, dict[str, str], tuple[int, int]]:
    """The keys of the rows in `live`, the contents judged among them, and (how many rows,
    how many without a position): read in a task, only the few columns these need."""
    if not live:
        return pa.array([], pa.string()), {}, (0, 0)
    dataset = output_dataset(fs, root, live)
    extra = [c for c in (CONTENT_HASH, DUPLICATE_OF) if c in dataset.schema.names]
    table = dataset.to_table(columns=[SOURCE, SOURCE_ROW, *extra])
    keys = row_keys(table)
    seen = seen_in_output(table if DUPLICATE_OF in table.column_names else None)
    return keys, seen, (len(keys), pc.sum(pc.is_null(keys)).as_py() or 0)


def row_keys(table: pa.Table, source: str = SOURCE, position: str = SOURCE_ROW) -> pa.Array:
    """`file<sep>position` for each row: its identity from the read on."""
    positions = pc.cast(table.column(position), pa.string())
    return pc.binary_join_element_wise(table.column(source), positions, KEY_SEP).combine_chunks()
