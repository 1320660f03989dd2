"""A few hundred real Alpaca examples through the whole pipeline."""

import json

import pyarrow.dataset as pads
import pytest
from conftest import job_config

from alpagasus_ray.filter.job import run_filter

pytestmark = pytest.mark.slow  # end to end; deselect with -m 'not slow'

N = 300


def test_alpaca_sample_end_to_end(ray_session, tiny_judge, shared_data, tmp_path):
    records = json.loads((shared_data / "alpaca_random_9k.json").read_text())[:N]
    src = tmp_path / "alpaca_sample.json"
    src.write_text(json.dumps(records))  # a JSON array file, as Alpaca ships
    cfg = job_config(str(src), str(tmp_path / "out"), tiny_judge, judge__batch_size=64)
    manifest = run_filter(cfg)

    assert manifest.rows_read == N == sum(manifest.counts.values())
    table = pads.dataset(tmp_path / "out" / "data", partitioning="hive").to_table()
    rows = table.to_pylist()
    assert len(rows) == N
    originals = {(r["instruction"], r["input"], r["output"]) for r in records}
    assert {(r["instruction"], r["input"], r["output"]) for r in rows} == originals
    scored = [r for r in rows if r["decision"] in ("kept", "rejected")]
    assert len(scored) + manifest.counts["quarantined"] + manifest.counts["failed"] == N
    assert all(0.0 <= r["score"] <= 5.0 for r in scored)
