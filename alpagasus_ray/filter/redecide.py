"""Re-decide a finished output from its stored scores: a new `filter.threshold`, or a
`filter.keep_fraction` turned into the matching score quantile, with no judge call.

Only `kept` and `rejected` rows move; `quarantined` and `failed` rows have no score to
compare and keep their decision. The rows stream through the driver in record batches
(pyarrow datasets, bounded memory) into new files beside the old ones; a new manifest that
lists them is the commit (`filter/manifest.py`), and only then are the old files removed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from alpagasus_ray.core.errors import InvariantError
from alpagasus_ray.data.io import DATA_DIR, join, output_dataset, read_output_table
from alpagasus_ray.data.schema import DECISION, DECISIONS, SCORE, Decision
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.criteria import kept_mask
from alpagasus_ray.filter.manifest import (
    Manifest,
    Redecision,
    commit,
    committed,
    counts_of,
    file_entries,
    judge_record,
    listed_files,
    remove_unlisted,
)
from alpagasus_ray.filter.resume import REDECIDED_PREFIX

log = logging.getLogger(__name__)
_JUDGED = pa.array([Decision.KEPT.value, Decision.REJECTED.value])


def keep_threshold(scores: pa.Array, keep_fraction: float) -> float:
    """The score at which about `keep_fraction` of the scored rows are kept (score >=
    threshold); ties at the threshold are all kept, so the kept share can be a little more."""
    scores = pc.drop_null(scores)
    if not len(scores):
        raise ValueError("filter.keep_fraction: no row has a score to rank")
    return float(pc.quantile(scores, q=1.0 - keep_fraction, interpolation="higher")[0].as_py())


def decision_threshold(
    cfg: FilterJobConfig, fs: fsspec.AbstractFileSystem, root: str, files: list[str]
) -> float:
    """`filter.threshold`, or the quantile `filter.keep_fraction` asks for."""
    if cfg.filter.keep_fraction is None:
        return cfg.filter.threshold
    table = read_output_table(fs, root, files, columns=[SCORE, DECISION])
    judged = table.filter(pc.is_in(table.column(DECISION), value_set=_JUDGED))
    return keep_threshold(judged.column(SCORE), cfg.filter.keep_fraction)


def redecide(
    fs: fsspec.AbstractFileSystem,
    root: str,
    files: list[str],
    threshold: float,
    cfg: FilterJobConfig | None = None,
) -> tuple[list[str], dict[str, int]]:
    """The data `files` decided again at `threshold` (and, with criteria, `cfg`'s rule and
    criteria thresholds), written as new files (the old ones are left for the caller to
    retire after its commit); returns (new files, rows moved)."""
    changed = {"kept -> rejected": 0, "rejected -> kept": 0}
    judge, rule = (cfg.judge, cfg.filter.rule) if cfg is not None else (None, "all")

    def decide(table: pa.Table) -> pa.Table:
        judged = pc.is_in(table.column(DECISION), value_set=_JUDGED)
        keep = kept_mask(table, threshold, judge, rule)
        new = pc.if_else(
            judged, pc.if_else(keep, Decision.KEPT.value, Decision.REJECTED.value), None
        )
        before = table.column(DECISION).cast(pa.string())
        new = pc.coalesce(new, before)
        moved = pc.not_equal(before, new)
        for key, to in (("kept -> rejected", "rejected"), ("rejected -> kept", "kept")):
            changed[key] += pc.sum(pc.and_(moved, pc.equal(new, to))).as_py() or 0
        return table.set_column(table.column_names.index(DECISION), DECISION, new)

    written = rewrite(fs, root, files, decide)
    log.info("re-decided %s at threshold %g from stored scores: %s", root, threshold, changed)
    return written, changed


def rewrite(
    fs: fsspec.AbstractFileSystem,
    root: str,
    files: list[str],
    change: Callable[[pa.Table], pa.Table],
) -> list[str]:
    """The rows of the data `files` passed through `change` (a batch at a time, in bounded
    memory), written as new files in the decision folders their new `decision` says, named
    apart from every earlier file; returns the new files. The old ones are left for the
    caller to retire once its manifest, listing the new ones, is committed."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    source = output_dataset(fs, root, files, every_column=True)
    schema = source.schema.set(
        source.schema.get_field_index(DECISION), pa.field(DECISION, pa.string())
    )

    def batches() -> Any:
        for batch in source.to_batches():
            yield from change(pa.Table.from_batches([batch])).cast(schema).to_batches()

    written: list[str] = []
    pads.write_dataset(
        batches(),
        join(root, DATA_DIR),
        schema=schema,
        format="parquet",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        partitioning=pads.partitioning(pa.schema([(DECISION, pa.string())]), flavor="hive"),
        basename_template=f"{REDECIDED_PREFIX}{uuid.uuid4().hex[:12]}-{{i}}.parquet",
        existing_data_behavior="overwrite_or_ignore",
        file_visitor=lambda f: written.append(f.path),
    )
    return written


def redecide_finished(
    cfg: FilterJobConfig, fs: fsspec.AbstractFileSystem, root: str, fingerprint: dict[str, Any]
) -> Manifest:
    """A finished output re-decided at the new settings, committed as a new manifest (with
    the new fingerprint); the judge is not called."""
    from alpagasus_ray.filter.report import write_report

    before = committed(fs, root, cfg.output.uri)
    old = listed_files(root, before)
    remove_unlisted(fs, root, old)  # what an earlier change left when it died
    threshold = decision_threshold(cfg, fs, root, old)
    new, changed = redecide(fs, root, old, threshold, cfg)
    entries = file_entries(fs, root, new)
    counts = counts_of(entries)
    total = sum(counts.values())
    ok = before.rows_read == total
    invariant = (
        f"rows_read ({before.rows_read}) == kept + rejected + quarantined + failed ({total})"
    )
    again = Redecision(from_threshold=before.threshold, keep_fraction=cfg.filter.keep_fraction,
                       changed=changed, judge_calls=0)  # fmt: skip
    manifest = before.model_copy(
        update={
            "status": "complete" if ok else "inconsistent",
            "files": entries,
            "counts": {d: counts.get(d, 0) for d in DECISIONS},
            "invariant": invariant,
            "invariant_ok": ok,
            "kept_fraction": counts.get(Decision.KEPT.value, 0) / total if total else 0.0,
            "redecided": again,
            "threshold": threshold,
            "keep_fraction": cfg.filter.keep_fraction,
            "fingerprint": fingerprint,
            "config": cfg.redacted(),
            "judge": judge_record(cfg) if cfg.judge.criteria else before.judge,
        }
    )
    judged = {**manifest.judge, "input": cfg.input.uri}
    write_report(fs, root, new, cfg.report, threshold, judged, manifest.skipped_files)
    commit(fs, root, manifest)
    remove_unlisted(fs, root, new)
    if not ok:
        raise InvariantError(invariant)
    return manifest
