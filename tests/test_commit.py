"""The manifest is the commit: readers read only the files it lists, and a process killed at
any step of a change leaves a committed state that the rerun completes.

The crash tests run the real CLI in a subprocess (`crash_driver.py`) that SIGKILLs itself at
one named step, then check what every reader sees, then rerun the same command and compare
with a clean run's output (ids and decisions; scores to float noise)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import (
    S3_CREDENTIALS,
    assert_same_rows,
    clean_output,
    job_config,
    s3_client,
    session_cluster_env,
)
from helpers import write_jsonl

from alpagasus_ray.core.config import StorageConfig
from alpagasus_ray.data.io import MANIFEST, UnfinishedFilterOutput, filesystem
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.manifest import committed, listed_files
from alpagasus_ray.filter.report import regenerate

ROWS = 40
SETTINGS = {"judge__batch_size": 8, "filter__threshold": 2.0, "output__overwrite": False}
REDECIDE = {**SETTINGS, "filter__threshold": 2.4}  # a re-decision of the clean output
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    rows = synthetic_examples(ROWS, seed=31) + [{"instruction": "no output"}, "{broken"]
    rows += [rows[0], rows[1]]  # two copies: settled at the end of the run
    return write_jsonl(tmp_path_factory.mktemp("commit") / "in.jsonl", rows)


@pytest.fixture(scope="module")
def clean(ray_session, stand_in, source, tmp_path_factory) -> Path:
    return clean_output(source, stand_in, tmp_path_factory, **SETTINGS)


def committed_rows(uri: str, storage=None) -> dict[tuple[str, int], dict]:
    """The rows of the files a committed manifest lists, by position; every listed file
    exists and they hold exactly the manifest's counts."""
    fs, root = filesystem(uri, storage or StorageConfig())
    manifest = committed(fs, root, uri)
    files = listed_files(root, manifest)
    rows = []
    for path, entry in zip(files, manifest.files, strict=True):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        assert table.num_rows == entry.rows, path
        cols = ["source", "source_row", "id", "score", "reason"]
        for row in table.select(cols).to_pylist():
            rows.append({**row, "decision": entry.decision})
    counts = {d: sum(r["decision"] == d for r in rows) for d in manifest.counts}
    assert counts == manifest.counts
    keyed = {(r["source"], r["source_row"]): r for r in rows}
    assert len(keyed) == len(rows), "a row is in the output twice"
    return keyed


def assert_readers_agree(uri: str, stand_in: str, tmp_path: Path, storage=None) -> bool:
    """`report` and `train`'s reader either refuse the output or read exactly the state its
    committed manifest lists; True when there is such a state. (Train reads the stand-in
    judge's output only when told to: that refusal is tested in test_hash_engine.py.)"""
    from alpagasus_ray.train.config import TrainConfig
    from alpagasus_ray.train.data import kept_input

    train = TrainConfig.model_validate(
        {
            "data": {"uri": uri, "allow_stand_in_judge": True},
            "model": {"name": stand_in},
            "run": {"name": "sft", "storage_path": str(tmp_path / "runs")},
            **({"storage": storage.model_dump()} if storage else {}),
        }
    )
    try:
        rows = committed_rows(uri, storage)
    except UnfinishedFilterOutput:
        for reader in (lambda: regenerate(uri, storage), lambda: kept_input(train)):
            with pytest.raises(UnfinishedFilterOutput):
                reader()
        return False
    report = regenerate(uri, storage)
    assert report["rows"] == len(rows)
    assert report["counts"]["kept"] == sum(r["decision"] == "kept" for r in rows.values())
    fs, root = filesystem(uri, storage or train.storage)
    kept = listed_files(root, committed(fs, root, uri), ("kept",))
    assert sorted(kept_input(train)[1][1]) == sorted(kept)
    return True


def killed_at(point: str, config: Path | None, *extra: str, command: str = "filter") -> str:
    """Run the filter (or `command`) with `config` (if any) and `extra` until `point`, on
    this session's Ray; returns its stderr. Ray ends the killed driver's job, as it does on
    a cluster."""
    cmd = [sys.executable, str(HERE / "crash_driver.py"), point, command]
    proc = subprocess.Popen(
        [*cmd, *(["--config", str(config)] if config else []), *extra],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**session_cluster_env(), "PYTHONPATH": str(HERE.parent)},
    )
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone with its driver
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, f"{point} was never reached:\n{err[-3000:]}"
    assert f"killed {point}" in err
    return err


def write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    return path


def test_readers_read_only_what_the_manifest_lists(clean, source, stand_in, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    listed = committed_rows(str(out))
    stray = out / "data" / "decision=kept" / "stray.parquet"  # e.g. left by a dead change
    shutil.copy(next((out / "data" / "decision=rejected").glob("*.parquet")), stray)
    assert assert_readers_agree(str(out), stand_in, tmp_path)  # the stray file is not read
    assert committed_rows(str(out)) == listed
    cfg = job_config(str(source), str(out), stand_in, **REDECIDE)
    run_filter(cfg)  # a re-decision: the next change of the output removes it
    assert not stray.exists()
    assert len(committed_rows(str(out))) == len(listed)


def test_the_manifest_is_versioned_and_an_older_one_refused(clean, stand_in, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["format_version"] == 2
    assert sum(f["rows"] for f in manifest["files"]) == manifest["rows_read"]
    del manifest["format_version"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnfinishedFilterOutput, match="manifest format 1"):
        regenerate(str(out))


def test_the_manifest_reads_back_as_written_and_a_mangled_one_is_refused(clean, tmp_path):
    """The typed manifest is the file: read back, it writes the same bytes; one whose
    fields are not a manifest's (hand-edited, another tool's) is refused in one line that
    names the first bad field, by every reader."""
    from alpagasus_ray.filter.manifest import read_manifest

    out = tmp_path / "out"
    shutil.copytree(clean, out)
    fs, root = filesystem(str(out), StorageConfig())
    assert read_manifest(fs, root, str(out)).to_json() == (out / MANIFEST).read_bytes()
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"][0]["rows"] = "many"
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnfinishedFilterOutput, match=r"not a valid manifest .*files\.0\.rows"):
        regenerate(str(out))
    with pytest.raises(UnfinishedFilterOutput, match="not a valid manifest") as err:
        committed(fs, root, str(out))
    assert "\n" not in str(err.value)


REDECIDE_POINTS = [
    "after:filter.redecide.redecide",  # new files written, nothing committed
    "after:filter.report.write_atomic#1",  # the new report half written
    "before:filter.redecide.commit",  # report written, not committed
    "after:filter.redecide.commit",  # committed, the old files still there
]


@pytest.fixture(scope="module")
def redecided(clean, source, stand_in, tmp_path_factory) -> dict:
    """The clean output re-decided at 2.4 without a kill: what every crashed one must end as."""
    out = tmp_path_factory.mktemp("redecided") / "out"
    shutil.copytree(clean, out)
    run_filter(job_config(str(source), str(out), stand_in, **REDECIDE))
    return committed_rows(str(out))


def rerun(cfg) -> None:
    """The same command again: it completes the change, or finds it complete already."""
    run_filter(cfg)


@pytest.mark.parametrize("point", REDECIDE_POINTS)
def test_a_redecision_killed_anywhere_leaves_a_committed_state(
    clean, source, stand_in, redecided, tmp_path, point
):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    before = committed_rows(str(out))
    cfg = job_config(str(source), str(out), stand_in, **REDECIDE)
    killed_at(point, write_config(cfg, tmp_path / "job.yaml"))
    assert assert_readers_agree(str(out), stand_in, tmp_path)  # old or new, whole
    state = committed_rows(str(out))
    assert state == before or state.keys() == redecided.keys()
    rerun(cfg)
    assert_same_rows(committed_rows(str(out)), redecided)
    data = {str(p) for p in (out / "data").rglob("*.parquet")}
    fs, root = filesystem(str(out), cfg.storage)
    assert data == set(listed_files(root, committed(fs, root, str(out))))  # no file left over
    report = json.loads((out / "report.json").read_text())
    assert (
        report["threshold"] == 2.4
        and report["counts"] == committed(*filesystem(str(out), cfg.storage), str(out)).counts
    )


RUN_POINTS = [
    "after:filter.job.settle_duplicates",  # copies settled, nothing committed
    "after:filter.job.redecide",  # keep_fraction's files beside their sources
    "before:filter.job.commit",
    "after:filter.job.commit",  # committed, a replaced file still there
]


@pytest.mark.parametrize("point", RUN_POINTS)
def test_a_run_killed_at_its_end_resumes_to_a_clean_output(
    clean, source, stand_in, tmp_path, point
):
    out = tmp_path / "out"
    keep = {"filter__keep_fraction": 0.5} if "redecide" in point or "commit" in point else {}
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS, **keep)
    killed_at(point, write_config(cfg, tmp_path / "job.yaml"))
    done = assert_readers_agree(str(out), stand_in, tmp_path)
    assert done == (point == "after:filter.job.commit")
    rerun(cfg)
    rows = committed_rows(str(out))
    if keep:  # the reference: the clean run decided at the same fraction
        ref = tmp_path / "ref"
        shutil.copytree(clean, ref)
        run_filter(job_config(str(source), str(ref), stand_in, **SETTINGS, **keep))
        assert_same_rows(rows, committed_rows(str(ref)))
    else:
        assert_same_rows(rows, committed_rows(str(clean)))
    data = {str(p) for p in (out / "data").rglob("*.parquet")}
    fs, root = filesystem(str(out), cfg.storage)
    listed = set(listed_files(root, committed(fs, root, str(out))))
    assert data == listed  # what the commit replaced is gone, whoever removed it


def test_a_redecision_on_s3_killed_anywhere_leaves_a_committed_state(
    clean, source, stand_in, redecided, s3_endpoint, tmp_path
):
    bucket = "alpagasus-commit"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    s3 = {"storage__endpoint_url": s3_endpoint, **S3_CREDENTIALS}
    for i, point in enumerate(REDECIDE_POINTS):
        uri = f"s3://{bucket}/run-{i}"
        cfg = job_config(str(source), uri, stand_in, **SETTINGS, **s3)
        fs, root = filesystem(uri, cfg.storage)
        fs.put(str(clean), root, recursive=True)
        cfg = job_config(str(source), uri, stand_in, **REDECIDE, **s3)
        killed_at(point, write_config(cfg, tmp_path / f"job-{i}.yaml"))
        fs.invalidate_cache()
        assert assert_readers_agree(uri, stand_in, tmp_path, cfg.storage)
        rerun(cfg)
        fs.invalidate_cache()
        rows = {(Path(k[0]).name, k[1]): r for k, r in committed_rows(uri, cfg.storage).items()}
        ref = {(Path(k[0]).name, k[1]): r for k, r in redecided.items()}
        assert_same_rows(rows, ref)


def with_an_engine_error(clean: Path, out: Path) -> tuple[str, int]:
    """`clean` copied to `out` as a finished run with one API failure leaves it: a kept row
    an `engine_error` in the failed partition, committed by a manifest that lists it."""
    import fsspec
    import pyarrow as pa

    from alpagasus_ray.filter.manifest import Manifest, commit, counts_of, file_entries

    shutil.copytree(clean, out)
    kept = sorted((out / "data" / "decision=kept").glob("*.parquet"))[0]
    table = pq.read_table(kept)
    victim = table.slice(0, 1).to_pylist()[0]
    pq.write_table(table.slice(1), kept)
    victim.update(score=None, score_probs=None, reason="engine_error", reason_detail="boom")
    failed = out / "data" / "decision=failed"
    failed.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist([victim], schema=table.schema), failed / "err.parquet")
    manifest = json.loads((out / MANIFEST).read_text())
    fs = fsspec.filesystem("file")
    manifest["files"] = file_entries(fs, str(out), [str(p) for p in out.rglob("*.parquet")])
    manifest["counts"] = {**manifest["counts"], **counts_of(manifest["files"])}
    commit(fs, str(out), Manifest.model_validate(manifest))
    return victim["source"], victim["source_row"]


@pytest.mark.parametrize("point", ["after:filter.job.resume_state", "before:filter.job.commit"])
def test_a_retry_killed_leaves_the_committed_state_and_its_rerun_completes(
    clean, source, stand_in, tmp_path, point
):
    out = tmp_path / "out"
    victim = with_an_engine_error(clean, out)
    before = committed_rows(str(out))
    assert before[victim]["reason"] == "engine_error"
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS, output__retry_failed=True)
    killed_at(point, write_config(cfg, tmp_path / "job.yaml"))
    assert assert_readers_agree(str(out), stand_in, tmp_path)
    assert committed_rows(str(out)) == before  # the retry's files are in no manifest
    manifest = run_filter(cfg)
    assert manifest.attempts[-1]["rows_written"] == 1  # the failed row alone
    assert_same_rows(committed_rows(str(out)), committed_rows(str(clean)))


def test_a_resume_killed_after_taking_stock_resumes_again(clean, source, stand_in, tmp_path):
    """Killed before its commit, then killed again once the resumed attempt has taken stock
    of what the first one wrote and claimed the output: the third attempt ends as a clean
    run."""
    out = tmp_path / "out"
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS)
    config = write_config(cfg, tmp_path / "job.yaml")
    killed_at("before:filter.job.commit", config)
    killed_at("after:filter.job.claim_output", config)
    assert not assert_readers_agree(str(out), stand_in, tmp_path)  # unfinished: refused
    manifest = run_filter(cfg)
    assert manifest.status == "complete" and len(manifest.attempts) == 3
    assert_same_rows(committed_rows(str(out)), committed_rows(str(clean)))


def test_a_listed_file_removed_by_hand_is_named_with_what_is_wrong(
    clean, source, stand_in, tmp_path, capsys
):
    """It used to be the bare path: now the path, that it is missing though the manifest
    lists it, and what to do; for every reader, and for a rerun that re-decides."""
    from alpagasus_ray.cli import main

    out = tmp_path / "out"
    shutil.copytree(clean, out)
    (gone,) = [p for p in (out / "data").rglob("*.parquet")][:1]
    gone.unlink()
    said = (
        f"{gone}: no such file; the output's manifest.json lists it, so it was removed or "
        "moved by hand: put it back, or run the filter again with output.overwrite=true"
    )
    config = write_config(
        job_config(str(source), str(out), stand_in, **REDECIDE), tmp_path / "j.yaml"
    )
    for args in (["report", str(out)], ["filter", "--config", str(config)]):
        assert main(args) == 2
        assert (
            capsys.readouterr().err.strip().splitlines()[-1] == f"alpagasus-ray {args[0]}: {said}"
        )
