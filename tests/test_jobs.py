"""`ray job submit`, as a user does it: a real head started with `ray start --head` on
127.0.0.1, token authentication as Ray sets it up by default, and JobSubmissionClient with the
repository as `working_dir`.

The head and the client run in their own processes with their own HOME (where `ray start`
writes the auth token and the client reads it), so they share nothing with the test
session's Ray; teardown stops only this head's processes (`ray stop` would stop every Ray).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import own_ray_env
from helpers import SUBMIT_JOB, AgentPorts, free_port, write_jsonl

from alpagasus_ray.demo import synthetic_examples

pytestmark = pytest.mark.slow  # end to end; deselect with -m 'not slow'

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SUBMIT = (
    SUBMIT_JOB
    + """
import sys
from ray.job_submission import JobStatus, JobSubmissionClient

address, root, config = sys.argv[1:4]
client = JobSubmissionClient(address)
job = submit_job(
    client,
    entrypoint=f"python jobs/filter.py --config {config}",
    runtime_env={"working_dir": root, "excludes": ["tests/", "benchmarks/"]},
)
deadline = time.time() + 1200
while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                         JobStatus.STOPPED} and time.time() < deadline:
    time.sleep(1)
print("STATUS", client.get_job_status(job).value)
print(client.get_job_logs(job))
"""
)


@pytest.fixture(scope="module")
def ray_head():
    home = Path(tempfile.mkdtemp(prefix="rayhome-"))
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Unix socket paths
    # RAY_AUTH_MODE=token: the Python client sends the token from ~/.ray/auth_token only then.
    env = own_ray_env(HOME=str(home), RAY_AUTH_MODE="token")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    dash, agents = free_port(), AgentPorts()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}",
        *agents.flags(),
        "--num-cpus=2",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    # What Ray's docs tell users: create the token, then start the head, which turns token
    # authentication on because the token exists.
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:  # a head that failed to start may still have left processes: ended below too
        with agents.written(temp_dir):
            subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
        yield {"address": f"http://127.0.0.1:{dash}", "env": env, "home": home}
    finally:
        stop_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)  # this head's logs, a few MB a start
        shutil.rmtree(home, ignore_errors=True)


def stop_processes_under(temp_dir: str) -> None:
    """Stop the processes of this head only: each carries its temp dir on its command line."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in (p.info["cmdline"] or [])):
            procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=5)  # the test's own head: no state to keep
    for p in alive:
        p.kill()


def run_client(head: dict, config: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "python"), "-c", SUBMIT, head["address"], str(ROOT), str(config)],
        env=env or head["env"],
        capture_output=True,
        text=True,
        timeout=1500,
    )


def submit(head: dict, config: Path) -> tuple[str, str]:
    proc = run_client(head, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, _, logs = proc.stdout.partition("\n")
    return status.removeprefix("STATUS ").strip(), logs


def test_a_client_without_the_token_is_refused(ray_head, tmp_path):
    assert (ray_head["home"] / ".ray" / "auth_token").is_file()
    stranger = {**ray_head["env"], "HOME": str(tmp_path)}
    proc = run_client(ray_head, tmp_path / "unused.yaml", env=stranger)
    assert proc.returncode != 0
    assert "401" in proc.stderr or "uthentication" in proc.stderr


def test_submitted_filter_job_succeeds(ray_head, tiny_judge, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(16, seed=9) + ["{broken"])
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"uri": str(data)},
                "output": {"uri": str(out)},
                "judge": {
                    "model": str(tiny_judge),
                    "min_score_mass": 0.0,
                    "num_cpus_per_replica": 0.5,
                },
                "filter": {"threshold": 2.0},
            }
        )
    )
    status, logs = submit(ray_head, config)
    assert status == "SUCCEEDED", logs[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_read"] == 17 == sum(manifest["counts"].values())
    assert manifest["counts"]["quarantined"] == 1
    assert "rows read 17 = kept" in logs


def test_bad_config_job_fails_with_the_error_in_its_logs(ray_head, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"uri": "x.jsonl"},
                "output": {"uri": str(tmp_path / "o")},
                "judge": {"model": "m", "modle": "typo"},
            }
        )
    )
    status, logs = submit(ray_head, config)
    assert status == "FAILED"
    assert "judge.modle" in logs and "invalid configuration" in logs
