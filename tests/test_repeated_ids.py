"""A user's id column that repeats: the first row of each id (by file, then row) stands and
every later one is quarantined `duplicate_id` naming it, the same in a clean run and in a run
killed after the quarantine was written and then resumed."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_same_rows, clean_output, job_config
from helpers import write_jsonl
from test_commit import committed_rows, killed_at, write_config

from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter

SETTINGS = {"input__columns__id": "qid", "judge__batch_size": 8, "output__overwrite": False}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """a.jsonl: ids q0..q9, then q0..q4 again; b.jsonl: q5..q18 (its first five repeat a's
    rows 5-9); and one row of a's without an id."""
    rows = synthetic_examples(30, seed=41)
    folder = tmp_path_factory.mktemp("ids") / "in"
    a = [{**r, "qid": f"q{i % 10}"} for i, r in enumerate(rows[:15])] + [rows[15]]
    b = [{**r, "qid": f"q{i + 5}"} for i, r in enumerate(rows[16:])]
    write_jsonl(folder / "a.jsonl", a)
    write_jsonl(folder / "b.jsonl", b)
    return folder


@pytest.fixture(scope="module")
def clean(ray_session, stand_in, source, tmp_path_factory) -> Path:
    return clean_output(source, stand_in, tmp_path_factory, **SETTINGS)


def test_each_later_row_of_an_id_is_quarantined_naming_the_first(clean, source):
    rows = committed_rows(str(clean))
    a, b = str(source / "a.jsonl"), str(source / "b.jsonl")
    repeats = {k: r for k, r in rows.items() if r["reason"] == "duplicate_id"}
    expected = {(a, 10 + i): (a, i) for i in range(5)} | {(b, i): (a, 5 + i) for i in range(5)}
    assert set(repeats) == set(expected)
    assert all(r["decision"] == "quarantined" for r in repeats.values())
    for key, row in repeats.items():
        assert row["id"] == rows[expected[key]]["id"]
        assert rows[expected[key]]["decision"] in ("kept", "rejected")
    assert rows[(a, 15)]["reason"] == "missing_field"  # no id: quarantined for that
    assert len(rows) == 30


def test_a_run_killed_after_its_quarantine_resumes_to_the_clean_output(
    clean, source, stand_in, tmp_path
):
    out = tmp_path / "out"
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS)
    killed_at("after:filter.repeated_ids.rewrite", write_config(cfg, tmp_path / "job.yaml"))
    manifest = run_filter(cfg)
    assert manifest.status == "complete"
    assert_same_rows(committed_rows(str(out)), committed_rows(str(clean)))
    data = {str(p) for p in (out / "data").rglob("*.parquet")}
    assert len(data) == len(manifest.files)  # the killed run's quarantine files are gone
