"""`alpagasus-ray export`: a finished output's rows, read through its manifest, in the
formats fine-tuning stacks read; one real filter run serves the whole module."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import cli_refusal, job_config, s3_client
from helpers import write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import StorageConfig
from alpagasus_ray.data.io import filesystem
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.export import export
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.manifest import committed, listed_files
from alpagasus_ray.filter.redecide import keep_threshold

TRIPLE = ("instruction", "input", "output")
BUCKET = "alpagasus-export"
TAGGED = {"instruction": "Tag this.", "input": "", "output": "Done.", "category": {"tags": ["x"]}}


@pytest.fixture(scope="module")
def finished(ray_session, tiny_judge, tmp_path_factory) -> Path:
    """A finished output: 32 rows (a `category` extra, one of them a JSON object), half kept
    by score, two quarantined (no output; a broken line)."""
    base = tmp_path_factory.mktemp("export")
    rows = [*synthetic_examples(31, seed=5, unique=True), TAGGED]
    rows += [{"instruction": "Name a colour.", "input": "", "output": None}]
    src = write_jsonl(base / "in.jsonl", [*rows, '{"instruction": "broken'])
    out = base / "out"
    manifest = run_filter(job_config(str(src), str(out), tiny_judge, filter__keep_fraction=0.5))
    assert manifest.counts["quarantined"] == 2 and manifest.counts["kept"] > 0
    return out


def stored(out: Path, decisions: tuple[str, ...], columns: list[str] | None = None) -> pa.Table:
    """The committed rows of `decisions`, read with pyarrow from the manifest's files."""
    fs, root = filesystem(str(out), StorageConfig())
    files = listed_files(root, committed(fs, root, str(out)), decisions)
    return pa.concat_tables([pq.read_table(f, columns=columns or list(TRIPLE)) for f in files])


def triples(rows: list[dict]) -> set[tuple]:
    return {(r["instruction"], r["input"] or "", r["output"]) for r in rows}


def from_messages(line: str) -> tuple:
    turns = json.loads(line)["messages"]
    user, answer = turns[-2]["content"], turns[-1]["content"]
    instruction, _, given = user.partition("\n\n")
    return instruction, given, answer


def load(fmt: str, path: Path) -> list[dict]:
    """The export as its consumer reads it, as (instruction, input, output) dicts."""
    if fmt == "alpaca":
        return json.loads(path.read_text())
    if fmt == "messages":
        lines = path.read_text().splitlines()
        return [dict(zip(TRIPLE, from_messages(line), strict=True)) for line in lines]
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    import datasets

    return list(datasets.load_from_disk(str(path)))


@pytest.mark.parametrize("fmt", ["alpaca", "messages", "parquet", "hf"])
def test_each_format_equals_the_kept_partition(finished, tmp_path, capsys, fmt):
    dest = tmp_path / f"kept.{fmt}"
    assert main(["export", str(finished), "--format", fmt, "--to", str(dest)]) == 0
    kept = stored(finished, ("kept",)).to_pylist()
    got = load(fmt, dest)
    assert len(got) == len(kept) and triples(got) == triples(kept)
    line = capsys.readouterr().out.strip()
    assert line == f"exported {len(kept)} rows as {fmt} to {dest}"
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]  # no temporary left
    if fmt == "alpaca":
        assert all(list(r) == list(TRIPLE) for r in got)  # the paper's keys, in its order


def test_extra_columns_and_system_prompt(finished, tmp_path):
    everything = stored(finished, (), ["instruction", "category"]).to_pylist()
    want = {r["instruction"]: json.loads(r["category"]) for r in everything if r["category"]}
    assert want[TAGGED["instruction"]] == TAGGED["category"]  # stored as JSON text, decoded
    for fmt in ("alpaca", "messages"):
        dest = tmp_path / fmt
        system = "Be brief." if fmt == "messages" else None
        export(str(finished), fmt, str(dest), "all", extra_columns=True, system_prompt=system)
        text = dest.read_text()
        rows = json.loads(text) if fmt == "alpaca" else [json.loads(x) for x in text.splitlines()]
        if fmt == "messages":
            assert all(r["messages"][0] == {"role": "system", "content": system} for r in rows)
            rows = [{"instruction": from_messages(json.dumps(r))[0], **r} for r in rows]
        got = {r["instruction"]: r["category"] for r in rows if r["category"] is not None}
        assert got == want
    export(str(finished), "parquet", str(tmp_path / "x.parquet"), extra_columns=True)
    assert pq.read_schema(tmp_path / "x.parquet").names == [*TRIPLE, "category"]


def test_min_score_and_keep_fraction_select_by_stored_score(finished, tmp_path):
    judged = stored(finished, ("kept", "rejected"), [*TRIPLE, "score"])
    scores = judged.column("score")
    cut = float(pc.min(scores).as_py() + pc.max(scores).as_py()) / 2
    for flag, value, threshold in (
        ("--min-score", cut, cut),
        ("--keep-fraction", 0.3, keep_threshold(scores.combine_chunks(), 0.3)),
    ):
        dest = tmp_path / f"{flag}.json"
        args = ["export", str(finished), "--format", "alpaca", "--to", str(dest)]
        assert main([*args, flag, str(value)]) == 0
        passing = judged.filter(pc.greater_equal(judged.column("score"), threshold))
        assert triples(json.loads(dest.read_text())) == triples(passing.to_pylist())
        assert 0 < passing.num_rows < judged.num_rows


def test_quarantined_rows_on_request(finished, tmp_path):
    dest = tmp_path / "q.jsonl"
    assert export(str(finished), "messages", str(dest), "quarantined")["rows"] == 2
    got = {from_messages(line) for line in dest.read_text().splitlines()}
    assert ("Name a colour.", "", None) in got and ("", "", None) in got  # and the broken line


def test_refusals(finished, tmp_path, capsys, monkeypatch):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished, unfinished)
    (unfinished / "manifest.json").unlink()
    dest = tmp_path / "x.json"
    line, _ = cli_refusal(
        capsys, ["export", str(unfinished), "--format", "alpaca", "--to", str(dest)]
    )
    assert "not a finished filter output" in line and not dest.exists()

    inside = finished / "data" / "kept.json"
    line, _ = cli_refusal(
        capsys, ["export", str(finished), "--format", "alpaca", "--to", str(inside)]
    )
    assert "inside the filter output" in line and not inside.exists()

    dest.write_text("mine")
    line, _ = cli_refusal(
        capsys, ["export", str(finished), "--format", "alpaca", "--to", str(dest)]
    )
    assert "--overwrite" in line and dest.read_text() == "mine"
    assert (
        main(["export", str(finished), "--format", "alpaca", "--to", str(dest), "--overwrite"]) == 0
    )
    assert json.loads(dest.read_text())

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    line, _ = cli_refusal(
        capsys, ["export", str(finished), "--format", "hf", "--to", str(tmp_path / "hf")]
    )
    assert "alpagasus-ray[export]" in line


def test_s3_in_and_out(finished, s3_endpoint):
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    for path in finished.rglob("*"):
        if path.is_file():
            key = f"run/{path.relative_to(finished)}"
            client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    storage = StorageConfig(
        endpoint_url=s3_endpoint,
        access_key_id="testing",
        secret_access_key="testing-secret",
        region="us-east-1",
    )
    for fmt, to in (("alpaca", "exports/kept.json"), ("hf", "exports/kept-hf")):
        result = export(f"s3://{BUCKET}/run", fmt, f"s3://{BUCKET}/{to}", storage=storage)
        assert result["rows"] == stored(finished, ("kept",)).num_rows
    body = client.get_object(Bucket=BUCKET, Key="exports/kept.json")["Body"].read()
    assert triples(json.loads(body)) == triples(stored(finished, ("kept",)).to_pylist())
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=BUCKET, Prefix="exports/kept-hf/")["Contents"]
    ]
    assert "exports/kept-hf/dataset_info.json" in keys


def test_a_killed_exports_work_folder_is_removed_by_the_next_export_to_its_target(
    finished, tmp_path
):
    """SIGKILLed before the rename, an export leaves its work folder beside the target;
    the next export to that target removes it, and a live export's, or one for another
    target, is left alone."""
    dest = tmp_path / "kept.json"
    killer = [sys.executable, str(Path(__file__).with_name("crash_driver.py")),
              "before:filter.export.publish", "export", str(finished), "--format", "alpaca",
              "--to", str(dest)]  # fmt: skip
    killed = subprocess.run(killer, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (left,) = [p.name for p in tmp_path.iterdir()]
    assert left.startswith(".alpagasus-export-") and not dest.exists()
    live = subprocess.Popen(["sleep", "600"])  # an export to the same target, still running
    try:
        alive = tmp_path / f".alpagasus-export-{live.pid}-kept.json.abcd1234"
        other = tmp_path / f".alpagasus-export-{killed_pid(left)}-other.json.abcd1234"
        alive.mkdir()
        other.mkdir()
        assert main(["export", str(finished), "--format", "alpaca", "--to", str(dest)]) == 0
    finally:
        live.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, dest.name,
                                                                 other.name])  # fmt: skip


def killed_pid(work_folder: str) -> int:
    return int(work_folder.split("-")[2])
