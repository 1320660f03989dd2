"""Ctrl-C of `alpagasus-ray filter` is the user's own stop: one line on stderr, exit code 130,
no Ray process of the run left behind, and the same command again resumes to the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import filter_args
from helpers import write_jsonl

from alpagasus_ray.data.io import MANIFEST, RUN_MARKER
from alpagasus_ray.demo import synthetic_examples

pytestmark = pytest.mark.slow
ROWS = 400  # enough that the run is still judging when the signal comes
CONFIG = (
    "judge: {min_score_mass: 0.0, batch_size: 8, num_cpus_per_replica: 0.5}\n"
    "input: {rows_per_block: 8}\nfilter: {threshold: 2.0}\nray: {num_cpus: 2}\n"
)
CLI = Path(sys.executable).with_name("alpagasus-ray")


def interruptible() -> None:
    """In the child, before it runs the CLI: SIGINT as a terminal's foreground command has it.
    A runner started in the background by a non-interactive shell (`make test &`, some CI)
    ignores SIGINT, and an ignored signal stays ignored across exec, so the CLI, rightly,
    would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def ray_processes(ray_tmp: str) -> list[psutil.Process]:
    """The live processes of the Ray instance whose temp folder is `ray_tmp`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and ray_tmp in " ".join(
            proc.info["cmdline"] or []
        ):
            found.append(proc)
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def ray_tmp():
    """A Ray temp folder of the CLI's own (short: Ray's socket paths have a length limit), so
    that its processes can be told from any other Ray on the machine."""
    path = tempfile.mkdtemp(prefix="ray-int-", dir="/tmp")
    yield path
    for proc in ray_processes(path):  # only if the test failed: ours, by pid
        proc.kill()
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("to", ["driver", "group"])
def test_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path, stand_in, ray_tmp, to):
    """`group`: what a terminal's Ctrl-C does, SIGINT to every process of the foreground
    group, Ray's own included; `driver`: to the command alone (`kill -INT`)."""
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(ROWS, seed=7))
    out = tmp_path / "out"
    cmd = [str(CLI), *filter_args(tmp_path, src, stand_in, config=CONFIG)]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    proc = subprocess.Popen(cmd, start_new_session=to == "group", preexec_fn=interruptible,
                            **pipes)  # fmt: skip
    try:  # run.json is written once Ray is up and the output is claimed
        wait_for(lambda: (out / RUN_MARKER).exists() or proc.poll() is not None, 600, RUN_MARKER)
        assert proc.poll() is None, proc.communicate()
        started = psutil.Process(proc.pid).children(recursive=True)
        assert ray_processes(ray_tmp), "no Ray process found by its temp folder"
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines[-1] == "alpagasus-ray filter: interrupted; rerun the same command to resume"
    assert "Traceback" not in err, err
    assert not (out / MANIFEST).exists()
    # Nothing the run started outlives it (Ray's own processes end with their driver).
    wait_for(lambda: not alive(started) and not ray_processes(ray_tmp), 300, "Ray to end")

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert again.returncode == 0, again.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["rows_read"] == ROWS == sum(manifest["counts"].values())
    assert manifest["status"] == "complete" and len(manifest["attempts"]) == 2


def test_a_killed_command_leaves_no_ray_process(tmp_path, stand_in, ray_tmp):
    """SIGKILL, as an out-of-memory killer does: the command cannot clean up, and Ray 2.60's
    agents outlive their raylet; the watcher it started with its Ray ends them."""
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(ROWS, seed=7))
    out = tmp_path / "out"
    cmd = [str(CLI), *filter_args(tmp_path, src, stand_in, config=CONFIG)]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_for(lambda: (out / RUN_MARKER).exists() or proc.poll() is not None, 600, RUN_MARKER)
        assert proc.poll() is None, proc.communicate()
        started = psutil.Process(proc.pid).children(recursive=True)
        names = {p.name() for p in started}
        assert any("raylet" in n for n in names), names  # the CLI's own Ray
        reaper = [p for p in started if "alpagasus_ray.core.reaper" in " ".join(p.cmdline())]
        assert len(reaper) == 1, [p.cmdline() for p in started]
    finally:
        proc.kill()
    proc.wait(timeout=300)
    # The watcher ends once it has ended what was left, seconds after the kill; Ray's agents
    # alone stay about a minute. No process of the command's may outlive the watcher.
    wait_for(lambda: not alive(reaper), 300, "the watcher to end")
    assert not [p.cmdline() for p in alive(started)]
    assert not ray_processes(ray_tmp)
