"""A killed run resumes where it stopped: rerunning the same command judges only the rows the
output lacks, retries `engine_error` rows, drops half-written files, and ends equal to a
clean run; a rerun with other settings is refused, saying what changed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import assert_same_rows, job_config
from helpers import own_ray_workers, write_jsonl

from alpagasus_ray.data.io import MANIFEST
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.preflight import PreflightError

ROWS = 480
SETTINGS = {"judge__batch_size": 8, "input__rows_per_block": 8, "output__overwrite": False}


def rows_by_position(out: Path) -> dict[tuple[str, int], dict]:
    table = pq.read_table(out / "data", partitioning="hive")
    rows = table.select(["source", "source_row", "id", "decision", "score", "reason"]).to_pylist()
    keyed = {(r["source"], r["source_row"]): r for r in rows}
    assert len(keyed) == len(rows), "a row is in the output twice"
    return keyed


def assert_same_output(resumed: Path, clean: Path) -> None:
    assert_same_rows(rows_by_position(resumed), rows_by_position(clean))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    rows = synthetic_examples(ROWS, seed=11) + [{"instruction": "no output"}, "{broken"]
    return write_jsonl(tmp_path_factory.mktemp("resume") / "in.jsonl", rows)


@pytest.fixture(scope="module")
def clean(ray_session, stand_in, source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    manifest = run_filter(job_config(str(source), str(out), stand_in, **SETTINGS))
    assert manifest.status == "complete" and len(manifest.attempts) == 1
    return out


def test_a_killed_driver_resumes_and_ends_like_a_clean_run(clean, source, stand_in, tmp_path):
    out = tmp_path / "out"
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    # Held before its commit (`crash_driver.py`): a fast machine cannot finish the run between
    # the look at its files and the kill.
    hold = [str(Path(__file__).with_name("crash_driver.py")), "hold:filter.job.check_claim"]
    cmd = [sys.executable, *hold, "filter", "--config", str(config)]
    driver = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:  # until part of the output is written, however slow the machine: it cannot end
        while driver.poll() is None and len(list((out / "data").rglob("*.parquet"))) < 3:
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait(timeout=300)
    assert driver.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / MANIFEST).exists()

    manifest = run_filter(cfg)  # the same command again
    assert manifest.status == "complete", manifest.invariant
    first, second = manifest.attempts
    assert first["rows_written"] > 0 and second["rows_before"] == first["rows_written"]
    assert second["rows_written"] == ROWS + 2 - second["rows_before"]
    assert second["rows_written"] < ROWS + 2  # the second attempt judged only the rest
    assert_same_output(out, clean)


def test_a_killed_judge_replica_is_replaced_and_the_run_ends_like_a_clean_run(
    ray_session, source, tiny_judge, tmp_path
):
    """A replica's process dies mid-run (a lost GPU node, an OOM kill): Ray restarts the
    actor and retries its batch; no row is lost, none written twice, and no rerun is needed.
    The tiny model's judge, not the stand-in: a replica must still be judging to be killed."""
    from concurrent.futures import ThreadPoolExecutor

    clean = tmp_path / "clean"
    run_filter(job_config(str(source), str(clean), tiny_judge, **SETTINGS))
    out = tmp_path / "out"
    cfg = job_config(str(source), str(out), tiny_judge, **SETTINGS)
    killed, written_then = None, 0
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_filter, cfg)
        while killed is None and not run.done():
            files, alive = list((out / "data").rglob("*.parquet")), own_ray_workers("ScoreStage")
            if files and alive:  # judging is well under way
                killed = alive[0].pid
                os.kill(killed, signal.SIGKILL)
                written_then = len(files)
            time.sleep(0.1)
        manifest = run.result(timeout=600)
    assert killed is not None, "the run ended before a replica could be killed"
    assert written_then < len(list((out / "data").rglob("*.parquet")))  # it went on after
    assert manifest.status == "complete", manifest.invariant
    assert len(manifest.attempts) == 1
    assert manifest.attempts[0]["rows_written"] == ROWS + 2
    assert_same_output(out, clean)


def doctored_copy(clean: Path, tmp_path: Path) -> tuple[Path, tuple[str, int]]:
    """The clean output as a killed run would leave it: no manifest, one row's judgement an
    `engine_error` in the failed partition, and a half-written data file."""
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    (out / MANIFEST).unlink()
    kept = sorted((out / "data" / "decision=kept").glob("*.parquet"))[0]
    table = pq.read_table(kept)
    victim = table.slice(0, 1).to_pylist()[0]
    pq.write_table(table.slice(1), kept)
    failed = out / "data" / "decision=failed"
    failed.mkdir(exist_ok=True)
    victim.update(score=None, score_probs=None, reason="engine_error", reason_detail="boom")
    pq.write_table(pa.Table.from_pylist([victim], schema=table.schema), failed / "err.parquet")
    (out / "data" / "decision=kept" / "partial.parquet").write_bytes(b"PAR1 cut off")
    return out, (victim["source"], victim["source_row"])


def test_engine_errors_are_judged_again_and_partial_files_dropped(
    clean, source, stand_in, tmp_path
):
    out, victim = doctored_copy(clean, tmp_path)
    manifest = run_filter(job_config(str(source), str(out), stand_in, **SETTINGS))
    assert manifest.status == "complete", manifest.invariant
    last = manifest.attempts[-1]
    assert last["engine_errors_retried"] == 1 and last["partial_files_removed"] == 1
    assert last["rows_written"] == 1  # the retried row, nothing else judged again
    assert rows_by_position(out)[victim]["decision"] == "kept"
    assert_same_output(out, clean)


def test_files_a_killed_attempt_writes_late_are_not_counted_twice(
    clean, source, stand_in, tmp_path, monkeypatch
):
    """A killed driver's write tasks can finish a moment after the rerun took stock (seen in
    the SIGKILL test above): their rows are judged again, and their file must go."""
    import alpagasus_ray.filter.job as job

    out, _ = doctored_copy(clean, tmp_path)
    late = sorted((out / "data" / "decision=rejected").glob("*.parquet"))[0]
    parked = tmp_path / late.name
    late.rename(parked)
    taking_stock = job.resume_state

    def then_the_late_file_lands(*args, **kwargs):
        state = taking_stock(*args, **kwargs)
        parked.rename(late)  # written by the dead attempt's orphan task, after the stock-take
        return state

    monkeypatch.setattr(job, "resume_state", then_the_late_file_lands)
    manifest = run_filter(job_config(str(source), str(out), stand_in, **SETTINGS))
    assert manifest.status == "complete", manifest.invariant
    assert manifest.attempts[-1]["late_files_removed"] == 1
    assert not late.exists()
    assert_same_output(out, clean)  # every row once


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"judge__dimension": "helpfulness"}, "judge.dimension"),
        ({"judge__rubric": "Rate 0-5, score first.\n{instruction}\n{output}"}, "judge.rubric"),
        ({"input__limit": 10}, "input.limit"),
    ],
)
def test_a_rerun_with_other_settings_is_refused(clean, source, stand_in, tmp_path, change, key):
    out, _ = doctored_copy(clean, tmp_path)
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS, **change)
    with pytest.raises(PreflightError, match=rf"^resume \({key}\): "):
        run_filter(cfg)
    assert (out / "data" / "decision=failed" / "err.parquet").exists()  # untouched


def judged_rows(out: Path) -> dict[tuple[str, int], dict]:
    return {k: r for k, r in rows_by_position(out).items() if r["decision"] in ("kept", "rejected")}


def test_a_new_threshold_is_decided_from_the_stored_scores(clean, source, stand_in, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    scores = sorted(r["score"] for r in judged_rows(clean).values())
    threshold = round(scores[len(scores) // 2], 3)  # between the clean run's scores
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS, filter__threshold=threshold)
    manifest = run_filter(cfg)
    assert manifest.redecided.judge_calls == 0 and manifest.threshold == threshold
    assert len(manifest.attempts) == 1  # no new attempt: nothing was judged
    before, after = rows_by_position(clean), rows_by_position(out)
    assert before.keys() == after.keys()
    for key, row in after.items():
        assert row["score"] == before[key]["score"] and row["id"] == before[key]["id"]
        if before[key]["decision"] in ("kept", "rejected"):
            assert row["decision"] == ("kept" if row["score"] >= threshold else "rejected")
        else:
            assert row["decision"] == before[key]["decision"]  # no score: stays as it was
    assert manifest.counts["kept"] == sum(s >= threshold for s in scores)
    assert manifest.status == "complete"


def test_keep_fraction_keeps_that_share_of_the_scored_rows(clean, source, stand_in, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS, filter__keep_fraction=0.25)
    manifest = run_filter(cfg)
    judged = judged_rows(out).values()
    kept = [r for r in judged if r["decision"] == "kept"]
    assert all(r["score"] >= manifest.threshold for r in kept)
    assert all(r["score"] < manifest.threshold for r in judged if r["decision"] == "rejected")
    assert 0.25 <= len(kept) / len(judged) < 0.25 + 5 / len(judged)  # ties at the quantile
    assert (out / "report.md").read_text().count(f"threshold {manifest.threshold:g}") == 1


def test_a_redecision_keeps_the_columns_only_some_files_have(tmp_path):
    import fsspec

    from alpagasus_ray.filter.redecide import redecide

    kept, rejected = tmp_path / "data" / "decision=kept", tmp_path / "data" / "decision=rejected"
    kept.mkdir(parents=True)
    rejected.mkdir()
    pq.write_table(pa.table({"id": ["a"], "score": [4.8]}), kept / "0.parquet")
    pq.write_table(
        pa.table({"id": ["b"], "score": [3.0], "note": ["own key"]}), rejected / "1.parquet"
    )
    old = [str(kept / "0.parquet"), str(rejected / "1.parquet")]
    new, changed = redecide(fsspec.filesystem("file"), str(tmp_path), old, threshold=2.5)
    assert changed == {"kept -> rejected": 0, "rejected -> kept": 1}
    assert not set(new) & set(old) and all(Path(f).exists() for f in old + new)
    rows = pq.ParquetDataset(new, partitioning="hive").read().to_pylist()
    table = pq.ParquetDataset(new, partitioning="hive").read()
    assert sorted(table.column_names) == ["decision", "id", "note", "score"]
    assert sorted((r["id"], r["decision"]) for r in rows) == [("a", "kept"), ("b", "kept")]
    assert {r["id"]: r["note"] for r in table.to_pylist()} == {"a": None, "b": "own key"}


def committed_with_an_engine_error(clean: Path, tmp_path: Path) -> tuple[Path, tuple[str, int]]:
    """The clean output as a finished run with one API failure leaves it: one row an
    `engine_error` in the failed partition, committed by a manifest that lists it."""
    from alpagasus_ray.filter.manifest import Manifest, commit, counts_of, file_entries

    out, victim = doctored_copy(clean, tmp_path)
    (out / "data" / "decision=kept" / "partial.parquet").unlink()
    manifest = json.loads((clean / MANIFEST).read_text())
    files = [str(p) for p in (out / "data").rglob("*.parquet")]
    manifest["files"] = file_entries(fsspec.filesystem("file"), str(out), files)
    manifest["counts"] = {**manifest["counts"], **counts_of(manifest["files"])}
    commit(fsspec.filesystem("file"), str(out), Manifest.model_validate(manifest))
    return out, victim


def test_retry_failed_judges_only_the_engine_errors_of_a_finished_output(
    clean, source, stand_in, tmp_path
):
    out, victim = committed_with_an_engine_error(clean, tmp_path)
    failed_file = out / "data" / "decision=failed" / "err.parquet"
    cfg = job_config(str(source), str(out), stand_in, **SETTINGS)
    plain = run_filter(cfg)  # a plain rerun changes nothing
    assert plain.already_complete and failed_file.exists()
    manifest = run_filter(cfg.model_copy(update={"output": cfg.output.model_copy(
        update={"retry_failed": True})}))  # fmt: skip
    assert manifest.status == "complete", manifest.invariant
    last = manifest.attempts[-1]
    assert last["engine_errors_retried"] == 1
    assert last["rows_written"] == 1  # the retried row, nothing else judged again
    assert rows_by_position(out)[victim]["decision"] == "kept"
    assert not failed_file.exists()  # replaced by the commit, then removed
    assert_same_output(out, clean)


def test_an_input_changed_since_the_first_attempt_is_refused(ray_session, stand_in, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(12, seed=5))
    out = tmp_path / "out"
    cfg = job_config(str(src), str(out), stand_in, **SETTINGS)
    run_filter(cfg)
    lines = src.read_text().splitlines(keepends=True)
    edited = lines[0] + "".join(lines[1:]).replace("a", "b", 3)  # the same size
    assert len(edited) == len(src.read_text()) and edited != src.read_text()
    src.write_text(edited)
    with pytest.raises(PreflightError, match=rf"finished run .input file {src} changed"):
        run_filter(cfg)  # finished: a re-decision would mix two inputs' rows
    (out / MANIFEST).unlink()  # as a run killed half way leaves it
    with pytest.raises(PreflightError, match=rf"^resume \(input files\): .*input file {src} "):
        run_filter(cfg)
    assert cfg.output.overwrite is False
    manifest = run_filter(cfg.model_copy(update={"output": cfg.output.model_copy(
        update={"overwrite": True})}))  # fmt: skip
    assert manifest.status == "complete" and manifest.rows_read == 12
