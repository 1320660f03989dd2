"""Re-decide a finished output from its stored scores: a new `filter.threshold`, or a
`filter.keep_fraction` turned into the matching score quantile, with no judge call.

Only `kept` and `rejected` rows move; `quarantined` and `failed` rows have no score to
compare and keep their decision. The rows stream through the driver in record batches
(pyarrow datasets, bounded memory) into a new `data/` that replaces the old one at the end.
"""

from __future__ import annotations

import logging
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from alpagasus_ray.config import JobConfig
from alpagasus_ray.io import DATA_DIR, join, output_dataset, read_output_table
from alpagasus_ray.schema import DECISION, SCORE, Decision

log = logging.getLogger(__name__)
_JUDGED = pa.array([Decision.KEPT.value, Decision.REJECTED.value])


def keep_threshold(scores: pa.Array, keep_fraction: float) -> float:
    """The score at which about `keep_fraction` of the scored rows are kept (score >=
    threshold); ties at the threshold are all kept, so the kept share can be a little more."""
    scores = pc.drop_null(scores)
    if not len(scores):
        raise ValueError("filter.keep_fraction: no row has a score to rank")
    return float(pc.quantile(scores, q=1.0 - keep_fraction, interpolation="higher")[0].as_py())


def decision_threshold(cfg: JobConfig, fs: fsspec.AbstractFileSystem, root: str) -> float:
    """`filter.threshold`, or the quantile `filter.keep_fraction` asks for."""
    if cfg.filter.keep_fraction is None:
        return cfg.filter.threshold
    table = read_output_table(fs, root, columns=[SCORE, DECISION])
    judged = table.filter(pc.is_in(table.column(DECISION), value_set=_JUDGED))
    return keep_threshold(judged.column(SCORE), cfg.filter.keep_fraction)


def redecide(fs: fsspec.AbstractFileSystem, root: str, threshold: float) -> dict[str, int]:
    """Rewrite the output's decisions at `threshold`; returns how many rows changed."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    source = output_dataset(fs, root, every_column=True)
    fresh, old = join(root, DATA_DIR + ".redecided"), join(root, DATA_DIR)
    changed = {"kept -> rejected": 0, "rejected -> kept": 0}

    def batches() -> Any:
        for batch in source.to_batches():
            table = pa.Table.from_batches([batch])
            judged = pc.is_in(table.column(DECISION), value_set=_JUDGED)
            keep = pc.greater_equal(table.column(SCORE), threshold)
            new = pc.if_else(
                judged, pc.if_else(keep, Decision.KEPT.value, Decision.REJECTED.value), None
            )
            new = pc.coalesce(new, table.column(DECISION).cast(pa.string()))
            before = table.column(DECISION).cast(pa.string())
            moved = pc.not_equal(before, new)
            changed["kept -> rejected"] += (
                pc.sum(pc.and_(moved, pc.equal(new, "rejected"))).as_py() or 0
            )
            changed["rejected -> kept"] += (
                pc.sum(pc.and_(moved, pc.equal(new, "kept"))).as_py() or 0
            )
            idx = table.column_names.index(DECISION)
            yield from table.set_column(idx, DECISION, new).to_batches()

    schema = source.schema.set(
        source.schema.get_field_index(DECISION), pa.field(DECISION, pa.string())
    )
    pads.write_dataset(
        batches(),
        fresh,
        schema=schema,
        format="parquet",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        partitioning=pads.partitioning(pa.schema([(DECISION, pa.string())]), flavor="hive"),
        existing_data_behavior="delete_matching",
    )
    fs.rm(old, recursive=True)
    fs.mv(fresh, old, recursive=True)
    log.info("re-decided %s at threshold %g from stored scores: %s", root, threshold, changed)
    return changed


def redecide_finished(
    cfg: JobConfig, fs: fsspec.AbstractFileSystem, root: str, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """A finished output re-decided at the new settings: data, report, manifest and the
    fingerprint in `run.json` follow; the judge is not called."""
    from alpagasus_ray.filter.report import count_decisions, write_report
    from alpagasus_ray.io import MANIFEST, RUN_MARKER, read_json, write_json
    from alpagasus_ray.schema import DECISIONS

    manifest = read_json(fs, join(root, MANIFEST))
    threshold = decision_threshold(cfg, fs, root)
    changed = redecide(fs, root, threshold)
    counts = count_decisions(fs, root)
    judged = {**manifest["judge"], "input": cfg.input.uri}
    report = write_report(fs, root, cfg.report, threshold, judged, manifest.get("skipped_files"))
    total = sum(counts.values())
    ok = manifest["rows_read"] == total
    manifest.update(
        status="complete" if ok else "inconsistent",
        counts={d: counts.get(d, 0) for d in DECISIONS},
        invariant=f"rows_read ({manifest['rows_read']}) == kept + rejected + quarantined + "
        f"failed ({total})",
        invariant_ok=ok,
        kept_fraction=report["kept_fraction"],
        redecided={
            "from_threshold": manifest["threshold"],
            "keep_fraction": cfg.filter.keep_fraction,
            "changed": changed,
            "judge_calls": 0,
        },
        threshold=threshold,
        keep_fraction=cfg.filter.keep_fraction,
        config=cfg.redacted(),
    )
    run = read_json(fs, join(root, RUN_MARKER))
    write_json(fs, join(root, RUN_MARKER), {**run, "fingerprint": fingerprint})
    write_json(fs, join(root, MANIFEST), manifest)
    return manifest
