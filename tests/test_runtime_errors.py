"""Failures after the start: an unreadable input file fails the job with its path in one line
(or, with `input.on_unreadable_file: skip`, is skipped and listed); `--verbose` brings the
traceback back."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import filter_args, job_config, write_cut_array

from alpagasus_ray.cli import main
from alpagasus_ray.filter.job import run_filter


def good_parquet(path: Path, rows: int, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "instruction": [f"Add {i} and {i}." for i in range(rows)],
            "output": [str(2 * i) for i in range(rows)],
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def broken_second_row_group(path: Path) -> Path:
    """Two row groups of 50 rows; the second one's first page overwritten with garbage, so
    the footer reads and the first 50 rows do too."""
    good_parquet(path, 100, row_group_size=50)
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))
    return path


JOB = "judge: {num_cpus_per_replica: 0.5, batch_size: 16}\n"


def test_a_corrupt_file_after_the_first_fails_with_its_path(
    ray_session, capsys, tmp_path, stand_in
):
    good_parquet(tmp_path / "in" / "a.parquet", 20)
    bad = tmp_path / "in" / "b.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")  # preflight reads only the first file
    code = main(filter_args(tmp_path, tmp_path / "in", stand_in, config=JOB))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(
        f"alpagasus-ray filter: input file ({bad}): cannot read it: OSError: "
    ), err


def test_unreadable_files_are_skipped_and_listed(ray_session, tmp_path, stand_in):
    good_parquet(tmp_path / "in" / "a.parquet", 20)
    footer = tmp_path / "in" / "b.parquet"
    footer.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    halfway = broken_second_row_group(tmp_path / "in" / "c.parquet")
    cfg = job_config(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        stand_in,
        input__on_unreadable_file="skip",
    )
    manifest = run_filter(cfg)
    skipped = {r["path"]: r for r in manifest.skipped_files}
    assert set(skipped) == {str(footer), str(halfway)}
    assert skipped[str(footer)]["rows"] == 0
    # Rows read before the broken page count: whole blocks of 16 (batch_size) of the first
    # row group's 50; the block that straddles the broken page is lost with the file.
    assert skipped[str(halfway)]["rows"] == 48
    assert all(r["error"].startswith("OSError: ") for r in skipped.values())
    assert manifest.rows_read == 20 + 48 == sum(manifest.counts.values())
    report = (tmp_path / "out" / "report.md").read_text()
    assert "2 unreadable input files skipped" in report and str(halfway) in report


def test_a_run_whose_every_file_is_skipped_is_complete_with_nothing_in_it(
    ray_session, tmp_path, stand_in
):
    """A half-downloaded JSON array too big for preflight to see its end (over 1 MiB), alone,
    with `skip`: the output says so (nothing read, the file listed), and its readers work."""
    bad, error = write_cut_array(tmp_path / "in" / "alpaca_data.json", records=40000)
    assert bad.stat().st_size > 2**20
    cfg = job_config(str(tmp_path / "in"), str(tmp_path / "out"), stand_in,
                     input__on_unreadable_file="skip")  # fmt: skip
    manifest = run_filter(cfg)
    assert manifest.status == "complete" and manifest.rows_read == 0
    assert set(manifest.counts.values()) == {0} and manifest.files == []
    assert [(r["path"], r["rows"], r["error"]) for r in manifest.skipped_files] == [
        (str(bad), 0, error)
    ]
    assert "1 unreadable input file skipped" in (tmp_path / "out" / "report.md").read_text()


def test_verbose_brings_back_the_traceback(capsys, tmp_path, stand_in):
    code = main(
        filter_args(tmp_path, tmp_path / "typo.jsonl", stand_in, config=JOB) + ["--verbose"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("alpagasus-ray filter: input (input.uri): ")
