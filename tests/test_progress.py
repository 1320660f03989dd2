"""One progress line on stderr: rows done (of the total when known), rows/s, ETA, kept."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import job_config, write_jsonl

from alpagasus_ray.filter.pipeline import run_filter
from alpagasus_ray.filter.progress import ProgressCounter, ProgressLine, progress_text
from alpagasus_ray.tiny import synthetic_examples


def test_the_line_says_rows_total_rate_eta_and_kept():
    assert progress_text(1234, 10_000, 321, 50.0) == (
        "filter: 1,234/10,000 rows (12.3%), 50 rows/s, ETA 2m55s, kept 321"
    )
    assert progress_text(1234, None, 321, 50.0) == "filter: 1,234 rows, 50 rows/s, kept 321"
    assert progress_text(10, 10, 3, 5.0) == "filter: 10/10 rows (100.0%), 5 rows/s, kept 3"


def test_a_line_every_interval_without_a_terminal(ray_session):
    counter = ProgressCounter.remote()
    out = io.StringIO()
    with ProgressLine(counter, lambda: 100, start=(40, 10), stream=out, interval_s=0.2):
        import time

        counter.add.remote(30, 5)
        deadline = time.monotonic() + 60  # a loaded machine answers slowly; never a hang
        while len(out.getvalue().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3  # periodic lines, then the final one
    assert lines[-1].startswith("filter: 70/100 rows (70.0%), ")
    assert lines[-1].endswith(", kept 15")


def test_the_job_ends_with_the_total_and_the_kept_count(ray_session, tiny_judge, tmp_path, capsys):
    rows = synthetic_examples(48, seed=2)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    manifest = run_filter(
        job_config(str(tmp_path / "in.parquet"), str(tmp_path / "out"), tiny_judge)
    )
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("filter: 48/48 rows (100.0%), "), last
    assert last.endswith(f", kept {manifest['counts']['kept']}")
    src = write_jsonl(tmp_path / "in.jsonl", rows[:20])
    run_filter(job_config(str(src), str(tmp_path / "out2"), tiny_judge))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("filter: 20 rows, "), last  # JSON: no total until it is read
