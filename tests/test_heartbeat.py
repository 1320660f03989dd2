"""One run writes an output at a time (`alpagasus_ray/data/heartbeat.py`): a second command
on a live output is refused at its start, naming the live run, `overwrite` or not; a run
whose owner is gone (a killed command here, a silent host elsewhere) is taken over, with a
line saying whose run it was. Locally and on S3 (moto)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
import yaml
from conftest import cli_refusal, job_config, s3_client, session_cluster_env
from helpers import write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import StorageConfig
from alpagasus_ray.data.heartbeat import STALE_S
from alpagasus_ray.data.io import HEARTBEAT, MANIFEST, RUN_MARKER, filesystem, join
from alpagasus_ray.demo import synthetic_examples

HERE = Path(__file__).resolve().parent
ROWS = 60
BUCKET = "alpagasus-heartbeat"
S3 = {"access_key_id": "testing", "secret_access_key": "testing-secret", "region": "us-east-1"}


def config_file(tmp_path: Path, out: str, model: str, storage: dict, **over) -> Path:
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(ROWS, seed=23, unique=True))
    settings = {"input__rows_per_block": 8, "judge__batch_size": 8, "output__overwrite": False}
    cfg = job_config(str(src), out, model, **{**settings, **storage, **over})
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    return path


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path) -> tuple[str, dict]:
    """(output URI, the job's storage settings) on local disk or on moto's S3."""
    if request.param == "local":
        return str(tmp_path / "out"), {}
    endpoint = request.getfixturevalue("s3_endpoint")
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    storage = {f"storage__{k}": v for k, v in S3.items()} | {"storage__endpoint_url": endpoint}
    return f"s3://{BUCKET}/{tmp_path.name}/out", storage


def output_fs(uri: str, storage: dict) -> tuple[fsspec.AbstractFileSystem, str]:
    return filesystem(uri, StorageConfig(**{k.split("__")[1]: v for k, v in storage.items()}))


def held_run(config: Path) -> subprocess.Popen:
    """The filter in a process of its own, held before its commit: a live run."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_driver.py"), "hold:filter.job.check_claim",
         "filter", "--config", str(config)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**session_cluster_env(), "PYTHONPATH": str(HERE.parent)},
    )  # fmt: skip
    for line in proc.stderr:  # until it says it holds, however slow the machine
        if line.startswith("crash_driver: holding"):
            return proc
    raise AssertionError(f"the first run ended before its commit: exit {proc.wait()}")


def test_a_second_command_on_a_live_output_is_refused_and_a_dead_ones_output_taken_over(
    ray_session, stand_in, tmp_path, place, capsys, caplog
):
    out, storage = place
    config = config_file(tmp_path, out, stand_in, storage)
    first = held_run(config)
    fs, root = output_fs(out, storage)
    try:
        claim = fs.cat(join(root, RUN_MARKER))
        for overwrite in ("false", "true"):  # overwrite must never destroy a live run's work
            line, _ = cli_refusal(capsys, ["filter", "--config", str(config), "--set",
                                           f"output.overwrite={overwrite}"])  # fmt: skip
            beat = json.loads(fs.cat(join(root, HEARTBEAT)))
            assert beat["pid"] == first.pid and beat["host"] == socket.gethostname()
            assert line.startswith(
                f"alpagasus-ray filter: another run is writing {out}: run {beat['id']} on "
                f"{socket.gethostname()} pid {first.pid}, started "
            ), line
            assert line.endswith("wait for it to end, or stop it, then run this command again")
            assert fs.cat(join(root, RUN_MARKER)) == claim  # the live run's claim untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # as an out-of-memory killer would
        first.wait(timeout=300)

    caplog.set_level("WARNING", logger="alpagasus_ray.data.heartbeat")
    assert main(["filter", "--config", str(config)]) == 0  # the same command resumes it
    taken = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(beat["started_at"]))
    assert taken == [
        f"{out}: taking over from run {beat['id']} on {beat['host']} pid {first.pid}, "
        f"started {started}: its process has ended"
    ]
    manifest = json.loads(fs.cat(join(root, MANIFEST)))
    assert manifest["status"] == "complete" and manifest["rows_read"] == ROWS
    assert manifest["attempts"][1]["rows_before"] > 0  # the dead run's rows were kept
    assert not fs.exists(join(root, HEARTBEAT))  # a run that ended leaves none


def beat_of(host: str, pid: int, silent_s: float) -> dict:
    now = time.time()
    return {"id": "0123456789ab", "host": host, "pid": pid, "pid_started": 0.0,
            "started_at": now - silent_s - 60, "beat_at": now - silent_s}  # fmt: skip


def test_another_hosts_run_is_live_until_it_has_been_silent_too_long(
    ray_session, stand_in, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    config = config_file(tmp_path, str(out), stand_in, {})
    out.mkdir()
    beat = out / HEARTBEAT
    beat.write_text(json.dumps(beat_of("gpu-node-7", 4242, silent_s=20)))
    line, _ = cli_refusal(capsys, ["filter", "--config", str(config)])
    assert "another run is writing" in line and "on gpu-node-7 pid 4242" in line, line
    assert "last heard 20 s ago" in line
    assert sorted(p.name for p in out.iterdir()) == [HEARTBEAT]  # nothing else touched

    beat.write_text(json.dumps(beat_of("gpu-node-7", 4242, silent_s=STALE_S + 30)))
    caplog.set_level("WARNING", logger="alpagasus_ray.data.heartbeat")
    assert main(["filter", "--config", str(config)]) == 0
    assert f"no heartbeat for {STALE_S + 30:.0f} s" in caplog.text
    assert json.loads((out / MANIFEST).read_text())["rows_read"] == ROWS
    assert not beat.exists()


def test_a_run_refused_before_it_writes_leaves_no_folder(ray_session, tmp_path, capsys):
    """The heartbeat is the first thing a run writes; a refusal after it (a judge that
    cannot be loaded on this cluster) leaves the output as it found it: absent."""
    out = tmp_path / "new" / "out"
    config = config_file(tmp_path, str(out), "stand-in", {}, judge__num_gpus_per_replica=4)
    code = main(["filter", "--config", str(config)])
    assert code == 2, capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"host": "h", "pid": "x"}'])
def test_a_heartbeat_edited_by_hand_names_no_live_run(tmp_path, caplog, text):
    from alpagasus_ray.data.heartbeat import check_not_in_use

    (tmp_path / HEARTBEAT).write_text(text)
    check_not_in_use(fsspec.filesystem("file"), str(tmp_path), str(tmp_path))
    assert "taking" in caplog.text and "over" in caplog.text
