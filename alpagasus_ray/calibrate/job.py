"""`alpagasus-ray calibrate`: does this judge agree with a reference before a big run pays
for it? A finished filter output (or a small one judged here, `--sample N`) is joined,
row by row, with a file of reference labels (a strong judge's, or people's), and the
agreement is written as `calibration.json`, `calibration.md` and `calibration.png`.

Rows are matched by their position in the input file (`source_row`, against a label
file's `index` column by default) or by a column both sides have (`--match id`). Only rows
the judge scored and the reference labelled are compared; the others are counted.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alpagasus_ray.calibrate.metrics import (
    at_threshold,
    bootstrap,
    matching_threshold,
    roc_auc,
    spearman,
)
from alpagasus_ray.core.config import StorageConfig
from alpagasus_ray.core.criteria import score_column
from alpagasus_ray.core.errors import CalibrationRefused
from alpagasus_ray.data.io import filesystem, join, read_output_table, write_atomic, write_json
from alpagasus_ray.data.schema import SCORE, SOURCE, SOURCE_ROW
from alpagasus_ray.text.rubrics import PAPER_SCALE

POSITION = "position"  # match on the row's place in its input file
# Below these, an AUC and its interval are noise that looks like a figure (3 rows of one
# class gave "1.0 [1.0, 1.0]"): refused, saying how many rows and of which class there were.
MIN_ROWS = 20
MIN_PER_CLASS = 5


def read_labels(uri: str, storage: StorageConfig) -> pa.Table:
    """JSON lines, a JSON array of objects, or Parquet; local or s3://."""
    import pyarrow.parquet as pq

    fs, path = filesystem(uri, storage)
    if not fs.exists(path):
        raise FileNotFoundError(f"label file {uri} does not exist")
    with fs.open(path, "rb") as f:
        if path.endswith(".parquet"):
            return pq.read_table(f)
        text = f.read().decode()
    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            return pa.Table.from_pylist(json.loads(stripped))
        return pa.Table.from_pylist([json.loads(line) for line in text.splitlines() if line])
    except (json.JSONDecodeError, TypeError, pa.ArrowException) as e:
        raise CalibrationRefused(f"label file {uri}: cannot read it: {e}") from None


def joined(
    output: pa.Table, labels: pa.Table, label: str, key: str, match: str, score: str = SCORE
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(scores, reference labels) of the rows both sides have, and what was left out."""
    for name, table, side in ((label, labels, "label file"), (key, labels, "label file")):
        if name not in table.column_names:
            raise CalibrationRefused(
                f"the {side} has no column {name!r} (it has: {', '.join(table.column_names)})"
            )
    ours = SOURCE_ROW if match == POSITION else match
    if ours not in output.column_names:
        raise CalibrationRefused(f"the filter output has no column {match!r} to match on")
    if match == POSITION and len(pc.unique(output.column(SOURCE).drop_null())) > 1:
        raise CalibrationRefused(
            "the output was read from several input files, so a row's position does not "
            "name it: match on a column both have (--match id, or one of your own)"
        )
    if len(pc.unique(labels.column(key))) != labels.num_rows:
        raise CalibrationRefused(f"the label file's {key!r} column has repeated values")
    reference = dict(zip(labels.column(key).to_pylist(), labels.column(label).to_pylist(),
                         strict=True))  # fmt: skip
    scores, refs = [], []
    left = {"rows_in_output": output.num_rows, "not_scored": 0, "not_labelled": 0}
    for k, value in zip(output.column(ours).to_pylist(), output.column(score).to_pylist(),
                        strict=True):  # fmt: skip
        ref = reference.get(k)
        if value is None:
            left["not_scored"] += 1
        elif ref is None:
            left["not_labelled"] += 1
        else:
            scores.append(float(value))
            refs.append(ref)
    bad = next((r for r in refs if not isinstance(r, (bool, int, float))), None)
    if bad is not None:
        raise CalibrationRefused(
            f"the label file's {label!r} holds {bad!r}: labels are booleans (or 0/1), or scores"
        )
    binary = all(r in (0, 1) for r in refs)  # True/False, or 0/1: a keep label, not a score
    return np.array(scores), np.array(refs, dtype=bool if binary else float), left


def agreement(
    scores: np.ndarray,
    reference: np.ndarray,
    threshold: float,
    label_threshold: float,
    resamples: int = 1000,
) -> dict[str, Any]:
    """Every figure of the report, from the compared rows' scores and reference values
    (booleans, or scores binarised at `label_threshold`)."""
    graded = reference.dtype != bool
    labels = reference >= label_threshold if graded else reference.astype(bool)
    kept = int(labels.sum())
    if len(scores) < MIN_ROWS or min(kept, len(scores) - kept) < MIN_PER_CLASS:
        raise CalibrationRefused(
            f"{len(scores)} rows were both scored and labelled ({kept} the reference keeps, "
            f"{len(scores) - kept} it drops); calibration needs at least {MIN_ROWS} rows and "
            f"{MIN_PER_CLASS} of each kind, or its figures are noise"
        )
    reference_rate = float(labels.mean())
    matched = matching_threshold(scores, reference_rate)
    result = {
        "rows_compared": int(len(scores)),
        "reference_keep_rate": reference_rate,
        "roc_auc": roc_auc(scores, labels),
        "roc_auc_ci95": bootstrap(roc_auc, scores, labels, resamples),
        "at_job_threshold": at_threshold(scores, labels, threshold),
        "threshold_matching_reference_rate": matched,
        "at_matching_threshold": at_threshold(scores, labels, matched),
    }
    if graded:
        result["spearman"] = spearman(scores, reference.astype(float))
        result["spearman_ci95"] = bootstrap(spearman, scores, reference.astype(float), resamples)
        result["label_threshold"] = label_threshold
    return result


def calibrate(
    output_uri: str,
    labels_uri: str,
    label: str,
    to: str,
    key: str = "index",
    match: str = POSITION,
    threshold: float | None = None,
    label_threshold: float = 4.5,
    resamples: int = 1000,
    storage: StorageConfig | None = None,
    criterion: str | None = None,
) -> dict[str, Any]:
    """Join a finished filter output with its reference labels and write the agreement: of
    the row's score, or of one `criterion`'s (`judge.criteria`)."""
    from alpagasus_ray.filter.manifest import committed, listed_files

    storage = storage or StorageConfig()
    fs, root = filesystem(output_uri, storage)
    manifest = committed(fs, root, output_uri)
    score, scale, cut = measured(manifest.judge, manifest.threshold, criterion)
    columns = [score, SOURCE, SOURCE_ROW] + ([] if match == POSITION else [match])
    files = listed_files(root, manifest)
    try:
        output = read_output_table(fs, root, files, columns=columns)
    except (pa.ArrowInvalid, KeyError):  # said as ours: the CLI names a cause's own error
        raise CalibrationRefused(f"the filter output has no column {match!r} to match on") from None
    labels = read_labels(labels_uri, storage)
    scores, reference, left = joined(output, labels, label, key, match, score)
    threshold = cut if threshold is None else threshold
    result = {"output": output_uri, "labels": labels_uri, "label": label, "scale": scale, **left,
              **agreement(scores, reference, threshold, label_threshold, resamples)}  # fmt: skip
    if criterion is not None:
        result["criterion"] = criterion
    write_calibration(to, storage, result, scores, reference, label_threshold)
    return result


def measured(
    judge: dict[str, Any], threshold: float, criterion: str | None
) -> tuple[str, list[int], float]:
    """The column `calibrate` measures, its scale and its cut, from the manifest's `judge`:
    the row's score, or a criterion's. A run decided criterion by criterion has no one
    score to measure: its criterion is asked for, by name."""
    criteria = judge.get("criteria") or {}
    if criterion is None:
        if criteria and judge.get("rule") != "mean":
            raise CalibrationRefused(
                f"the output was decided per criterion (rule {judge.get('rule')}): measure one "
                f"with --criterion ({', '.join(criteria)})"
            )
        return SCORE, judge.get("scale") or list(PAPER_SCALE), threshold
    if criterion not in criteria:
        has = f"its criteria: {', '.join(criteria)}" if criteria else "it has none"
        raise CalibrationRefused(f"--criterion {criterion}: the output has no such criterion "
                                 f"({has})")  # fmt: skip
    c = criteria[criterion]
    return score_column(criterion), c["scale"], c["threshold"]


def write_calibration(
    to: str,
    storage: StorageConfig,
    result: dict[str, Any],
    scores: np.ndarray,
    reference: np.ndarray,
    label_threshold: float,
) -> None:
    from alpagasus_ray.calibrate.render import plot, render

    fs, root = filesystem(to, storage)
    fs.makedirs(root, exist_ok=True)
    write_json(fs, join(root, "calibration.json"), finite_or_null(result))
    write_atomic(fs, join(root, "calibration.md"), render(result).encode())
    labels = reference >= label_threshold if reference.dtype != bool else reference.astype(bool)
    write_atomic(fs, join(root, "calibration.png"), plot(scores, labels, result))


def finite_or_null(value: Any) -> Any:
    """`value` with every NaN or infinity (an undefined figure: a Spearman of constant
    scores, a precision where nothing was kept) as None, so that the file is strict JSON
    (`null`), which every JSON reader takes; Python would write a bare `NaN`."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value
