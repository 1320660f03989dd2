"""One progress line on stderr: rows done (of the total when known), rows/s, ETA, kept."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import job_config
from helpers import write_jsonl

from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.progress import (
    ProgressCounter,
    ProgressLine,
    batch_key,
    estimate_total,
    progress_text,
)


def test_the_line_says_rows_total_rate_eta_and_kept():
    assert progress_text(1234, 10_000, 321, 50.0) == (
        "filter: 1,234/10,000 rows (12.3%), 50 rows/s, ETA 2m55s, kept 321"
    )
    assert progress_text(1234, None, 321, 50.0) == "filter: 1,234 rows, 50 rows/s, kept 321"
    assert progress_text(10, 10, 3, 5.0) == "filter: 10/10 rows (100.0%), 5 rows/s, kept 3"


def remote_counter():
    import ray

    return ray.remote(num_cpus=0)(ProgressCounter).remote()


def test_a_line_every_interval_without_a_terminal(ray_session):
    counter = remote_counter()
    out = io.StringIO()
    with ProgressLine(counter, lambda: 100, start=(40, 10), stream=out, interval_s=0.2):
        import time

        counter.add.remote(30, 5)
        deadline = time.monotonic() + 300  # a loaded machine answers slowly; never a hang
        while len(out.getvalue().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3  # periodic lines, then the final one
    assert lines[-1].startswith("filter: 70/100 rows (70.0%), ")
    assert lines[-1].endswith(", kept 15")


def test_the_job_ends_with_the_total_and_the_kept_count(ray_session, stand_in, tmp_path, capsys):
    rows = synthetic_examples(48, seed=2)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    manifest = run_filter(job_config(str(tmp_path / "in.parquet"), str(tmp_path / "out"), stand_in))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("filter: 48/48 rows (100.0%), "), last
    assert last.endswith(f", kept {manifest.counts['kept']}")
    attempt = manifest.attempts[-1]  # nothing was retried, no node ended
    assert attempt["batches_decided_again"] == 0 and attempt["nodes_ended"] == []
    src = write_jsonl(tmp_path / "in.jsonl", rows[:20])
    run_filter(job_config(str(src), str(tmp_path / "out2"), stand_in))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("filter: 20/20 rows (100.0%), "), last  # JSON: exact once read


def test_a_batch_decided_again_is_counted_once(ray_session):
    """A task Ray runs again after its worker or node was lost reports its batch again: the
    line must not pass the rows read (it once showed 1,564/1,500 after a lost node)."""
    import ray

    counter = remote_counter()
    first = batch_key(["a.jsonl"] * 8, list(range(8)))
    ray.get(counter.add.remote(8, 3, first))
    ray.get(counter.add.remote(8, 3, batch_key(["a.jsonl"] * 8, list(range(8, 16)))))
    ray.get(counter.add.remote(8, 3, first))  # the retried task
    ray.get(counter.add.remote(0, 2))  # settled copies: no batch of their own
    assert ray.get(counter.read.remote()) == (16, 8)
    assert ray.get(counter.batches_reported_again.remote()) == 1
    assert batch_key([None], [None]) is None  # rows with no place: a user's dataset


def test_a_json_total_is_estimated_from_bytes_until_every_file_is_read():
    sizes = {"a.jsonl": 1000, "b.jsonl": 3000}
    assert estimate_total({}, sizes) == (None, False)
    assert estimate_total({"a.jsonl": (500, 50, False)}, sizes) == (400, False)
    # A finished file counts all its bytes; its rows are exact.
    files = {"a.jsonl": (0, 100, True), "b.jsonl": (1500, 120, False)}
    assert estimate_total(files, sizes) == (220 + 132, False)
    files["b.jsonl"] = (0, 290, True)
    assert estimate_total(files, sizes) == (390, True)
    assert progress_text(100, 400, 7, 10.0, estimated=True) == (
        "filter: 100/~400 rows (25.0%), 10 rows/s, ETA 0m30s, kept 7"
    )


def test_the_read_tasks_say_how_far_into_each_file_they_are(ray_session, tmp_path):
    """The real JSON-lines datasource, read block by block as a read task does."""
    import pyarrow.fs as pafs
    import ray

    from alpagasus_ray.data.sources import InputDatasource

    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(5000, seed=4))
    path, size = str(src), src.stat().st_size
    counter = remote_counter()
    source = InputDatasource([path], rows_per_block=100, progress=counter)
    with pafs.LocalFileSystem().open_input_stream(path) as f:
        blocks = source._read_stream(f, path)
        for _ in range(10):
            next(blocks)
        files = ray.get(counter.read_files.remote())  # after the reports: one caller, in order
        offset, rows, done = files[path]
        assert rows == 1000 and not done and 0 < offset < size
        total, exact = estimate_total(files, {path: size})
        assert not exact and abs(total - 5000) < 250  # the rows are alike: a close estimate
        assert sum(b.num_rows for b in blocks) == 4000
    assert estimate_total(ray.get(counter.read_files.remote()), {path: size}) == (5000, True)
