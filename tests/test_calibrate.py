"""`alpagasus-ray calibrate`: the agreement figures are scikit-learn's and scipy's, the join
with a label file is by row, and what cannot be compared is counted or refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import cli_refusal, filter_args
from helpers import write_jsonl

from alpagasus_ray.calibrate.job import MIN_PER_CLASS, MIN_ROWS, finite_or_null
from alpagasus_ray.calibrate.metrics import (
    at_threshold,
    average_ranks,
    matching_threshold,
    roc_auc,
    roc_curve,
    spearman,
)
from alpagasus_ray.cli import main
from alpagasus_ray.demo import synthetic_examples


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_figures_are_scikit_learns_and_scipys(seed):
    # Imported here: the vLLM lane, which collects this file but runs none of it, has
    # neither (pyproject's `reference` extra).
    from scipy.stats import spearmanr
    from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(0, 5, 500), 1)  # ties, as a judge's scores have
    labels = rng.uniform(0, 5, 500) < scores + rng.normal(0, 1.5, 500)
    graded = np.round(scores + rng.normal(0, 1, 500))
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert spearman(scores, graded) == pytest.approx(spearmanr(scores, graded)[0], abs=1e-12)
    fpr, tpr = roc_curve(scores, labels)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    cut = 3.0
    got = at_threshold(scores, labels, cut)
    tn, fp, fn, tp = confusion_matrix(labels, scores >= cut).ravel()
    assert got["confusion"] == {"kept_by_both": tp, "kept_by_judge_only": fp,
                                "kept_by_reference_only": fn, "dropped_by_both": tn}  # fmt: skip
    assert got["precision"] == pytest.approx(precision_score(labels, scores >= cut))
    assert got["recall"] == pytest.approx(recall_score(labels, scores >= cut))
    rate = labels.mean()
    best = matching_threshold(scores, rate)
    gaps = {c: abs((scores >= c).mean() - rate) for c in np.unique(scores)}
    assert gaps[best] == min(gaps.values())


def test_labels_of_0_and_1_are_keep_labels_not_scores(finished):
    """0/1 integers binarised at --label-threshold 4.5 would all be "drop": they are read as
    the booleans they are."""
    tmp, out, rows = finished
    scores = {k: r["score"] for k, r in rows.items() if r["score"] is not None}
    cut = float(np.median(list(scores.values())))
    path = write_jsonl(tmp / "ints.jsonl", [{"index": k, "good": int(s >= cut)}
                                            for k, s in scores.items()])  # fmt: skip
    to = tmp / "ints"
    assert main(["calibrate", str(out), "--labels", str(path), "--label", "good", "--to",
                 str(to), "--threshold", str(cut), "--resamples", "20"]) == 0  # fmt: skip
    result = json.loads((to / "calibration.json").read_text())
    assert result["roc_auc"] == 1.0 and "spearman" not in result
    assert 0.4 < result["reference_keep_rate"] < 0.6


def test_ranks_share_ties_and_one_class_is_undefined():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert np.isnan(roc_auc(np.array([1.0, 2.0]), np.array([True, True])))


@pytest.fixture(scope="module")
def finished(ray_session, tiny_judge, tmp_path_factory):
    """A finished output of 60 rows and 2 the judge cannot score (quarantined)."""
    tmp = tmp_path_factory.mktemp("calibrate")
    rows = [{**r, "instruction": f"{r['instruction']} ({i})"}
            for i, r in enumerate(synthetic_examples(60, seed=4))]  # fmt: skip
    rows += [{"instruction": "", "input": "", "output": "x"}, {"instruction": "q", "output": None}]
    src = write_jsonl(tmp / "in.jsonl", rows)
    sets = ("judge.min_score_mass=0.0", "judge.batch_size=16", "judge.num_cpus_per_replica=0.5")
    assert main(filter_args(tmp, src, tiny_judge, *sets)) == 0
    out = tmp / "out"
    scored = {}
    for path in (out / "data").rglob("*.parquet"):
        for r in pq.read_table(path, columns=["source_row", "score", "id"]).to_pylist():
            scored[r["source_row"]] = r
    return tmp, out, scored


def test_a_reference_that_agrees_with_the_judge_scores_one(finished):
    tmp, out, rows = finished
    scores = {k: r["score"] for k, r in rows.items() if r["score"] is not None}
    cut = float(np.median(list(scores.values())))
    labels = [{"index": k, "good": s >= cut} for k, s in scores.items()][:-5]  # 5 unlabelled
    path = write_jsonl(tmp / "labels.jsonl", labels)
    to = tmp / "report"
    code = main(["calibrate", str(out), "--labels", str(path), "--label", "good",
                 "--to", str(to), "--threshold", str(cut), "--resamples", "200"])  # fmt: skip
    assert code == 0
    result = json.loads((to / "calibration.json").read_text())
    assert result["rows_compared"] == len(labels) and result["not_labelled"] == 5
    assert result["not_scored"] == 2 and result["rows_in_output"] == 62
    assert result["roc_auc"] == 1.0 and result["roc_auc_ci95"] == [1.0, 1.0]
    job = result["at_job_threshold"]
    assert job["precision"] == job["recall"] == job["agreement"] == 1.0
    assert (to / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert "| ROC AUC (0.5 = chance) | 1.000 |" in (to / "calibration.md").read_text()


def test_graded_labels_get_spearman_and_a_match_on_id(finished):
    tmp, out, rows = finished
    labels = [{"row_id": r["id"], "stars": 5.0 - r["score"]}  # the judge's opposite
              for r in rows.values() if r["score"] is not None]  # fmt: skip
    path = write_jsonl(tmp / "graded.jsonl", labels)
    to = tmp / "graded"
    code = main(["calibrate", str(out), "--labels", str(path), "--label", "stars", "--key",
                 "row_id", "--match", "id", "--label-threshold", "2.5", "--to", str(to),
                 "--resamples", "50"])  # fmt: skip
    assert code == 0
    result = json.loads((to / "calibration.json").read_text())
    assert result["spearman"] == pytest.approx(-1.0)
    assert result["rows_compared"] == len(labels)


@pytest.mark.parametrize(
    ("labels", "args", "line"),
    [
        ([{"index": 0, "good": True}], ["--label", "bad"], "the label file has no column 'bad'"),
        ([{"index": 0, "good": True}, {"index": 0, "good": False}], ["--label", "good"],
         "the label file's 'index' column has repeated values"),
        ([{"index": 0, "good": True}], ["--label", "good", "--match", "nope"],
         "the filter output has no column 'nope'"),
        ([{"index": 0, "good": "yes"}], ["--label", "good"],
         "the label file's 'good' holds 'yes': labels are booleans (or 0/1), or scores"),
    ],
)  # fmt: skip
def test_a_label_file_that_cannot_be_used_is_one_line(finished, capsys, labels, args, line):
    tmp, out, _ = finished
    path = write_jsonl(tmp / "bad-labels.jsonl", labels)
    err, _ = cli_refusal(capsys, ["calibrate", str(out), "--labels", str(path),
                                  "--to", str(tmp / "x"), *args])  # fmt: skip
    assert line in err


def no_bare_nan(name: str) -> None:
    raise AssertionError(f"calibration.json holds a bare {name}: not JSON")


@pytest.mark.parametrize(("matched", "keeps"), [(3, 3), (3, 2), (40, 40), (40, 36)])
def test_too_few_rows_or_too_few_of_a_kind_are_refused_in_one_line(
    finished, capsys, matched, keeps
):
    """3 matched rows of one class gave "AUC n/a", of both classes "1.0 [1.0, 1.0]", and
    bare NaN tokens in calibration.json: below the minimums there is no figure at all."""
    tmp, out, rows = finished
    scored = [k for k, r in rows.items() if r["score"] is not None][:matched]
    labels = [{"index": k, "good": i < keeps} for i, k in enumerate(scored)]
    path = write_jsonl(tmp / f"few-{matched}-{keeps}.jsonl", labels)
    to = tmp / f"few-{matched}-{keeps}"
    err, _ = cli_refusal(capsys, ["calibrate", str(out), "--labels", str(path), "--label",
                                  "good", "--to", str(to)])  # fmt: skip
    assert err == (
        f"alpagasus-ray calibrate: {matched} rows were both scored and labelled ({keeps} the "
        f"reference keeps, {matched - keeps} it drops); calibration needs at least {MIN_ROWS} "
        f"rows and {MIN_PER_CLASS} of each kind, or its figures are noise"
    )
    assert not to.exists()


def test_the_calibration_file_is_strict_json(finished):
    """An undefined figure is written as null, never as Python's bare NaN."""
    assert finite_or_null({"a": float("nan"), "b": [1.0, np.float64("inf")], "c": 2}) == {
        "a": None, "b": [1.0, None], "c": 2}  # fmt: skip
    tmp, out, rows = finished
    scores = {k: r["score"] for k, r in rows.items() if r["score"] is not None}
    # The judge's cut above every score: it keeps nothing, so its precision is undefined.
    labels = [{"index": k, "good": i % 2 == 0} for i, k in enumerate(scores)]
    path = write_jsonl(tmp / "strict.jsonl", labels)
    to = tmp / "strict"
    assert main(["calibrate", str(out), "--labels", str(path), "--label", "good", "--to",
                 str(to), "--threshold", "5.0", "--resamples", "20"]) == 0  # fmt: skip
    result = json.loads((to / "calibration.json").read_text(), parse_constant=no_bare_nan)
    assert result["at_job_threshold"]["precision"] is None
