"""The gate's own script (`tests/gate/lanes.sh`, what `make test` runs after ruff): both
lanes run, each with its marker, the second also when the first failed, and the gate fails
when either lane fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A lane's pytest as the script sees it: it says its arguments and a summary, and exits.
LANE = """#!/usr/bin/env bash
echo "args: $*"
echo "export: $(cat .test-logs/exported 2>/dev/null || echo none)"
for arg in "$@"; do
    case "$arg" in --junitxml=*) cat > "${{arg#--junitxml=}}" <<'XML'
<testsuites><testsuite>
<testcase classname="tests.test_fast" name="test_a" time="1.5"/>
<testcase classname="tests.test_slow" name="test_b[x]" time="30.0"/>
<testcase classname="tests.test_slow" name="test_b[y]" time="12.5"/>
</testsuite></testsuites>
XML
    esac
done
echo "{summary}"
exit {code}
"""


def gate(tmp_path: Path, main: tuple[str, int], vllm: tuple[str, int]) -> tuple[int, list[str]]:
    (tmp_path / "tests" / "gate").mkdir(parents=True)
    for script in ("lanes.sh", "time_by_file.py", "cpu_by_process.py"):
        shutil.copy(ROOT / "tests" / "gate" / script, tmp_path / "tests" / "gate")
    # The background export of the vLLM lane's model: done a second after it starts.
    (tmp_path / "tests" / "gate" / "export_models.py").write_text(
        "import pathlib, time\ntime.sleep(1)\npathlib.Path('.test-logs/exported').write_text('yes')"
    )
    for venv, (summary, code) in ((".venv", main), (".venv-vllm", vllm)):
        pytest_bin = tmp_path / venv / "bin" / "pytest"
        pytest_bin.parent.mkdir(parents=True)
        (pytest_bin.parent / "python").symlink_to(sys.executable)
        pytest_bin.write_text(LANE.format(summary=summary, code=code))
        pytest_bin.chmod(0o755)
    done = subprocess.run(["bash", str(tmp_path / "tests" / "gate" / "lanes.sh")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    return done.returncode, done.stdout.splitlines()


def test_both_lanes_run_with_their_markers_and_end_with_a_line_each(tmp_path):
    code, lines = gate(tmp_path, ("3 passed in 1.00s", 0), ("2 passed in 2.00s", 0))
    assert code == 0, lines
    for lane, marker in (("main", "not vllm"), ("vllm", "vllm")):
        xml = f"--junitxml=.test-logs/{lane}.xml"
        assert f"args: -q -ra --durations=25 {xml} -m {marker}" in lines
    # The vLLM lane starts once the background export has ended.
    vllm_start = lines.index("args: -q -ra --durations=25 --junitxml=.test-logs/vllm.xml -m vllm")
    assert lines[vllm_start + 1] == "export: yes", lines
    # Each lane's time by test file, the slowest first: 42.5 s of 44 s in the slow file.
    table = [line.split() for line in lines if line.endswith(".py")]
    assert table == [["42", "96.6%", "2", "test_slow.py"], ["2", "3.4%", "1", "test_fast.py"]] * 2
    # Then each lane's CPU by kind of process, sampled while its pytest ran.
    assert sum(line.endswith("kind of process") for line in lines) == 2, lines
    assert sum(line.startswith("counted ") for line in lines) == 2, lines
    main, vllm = lines[-2:]
    assert main.startswith("main: 3 passed in 1.00s (main lane: exit 0 in "), lines
    assert vllm.startswith("vllm: 2 passed in 2.00s (vllm lane: exit 0 in "), lines


@pytest.mark.parametrize("failing", ["main", "vllm"])
def test_a_failing_lane_fails_the_gate(tmp_path, failing):
    lanes = {"main": ("3 passed in 1.00s", 0), "vllm": ("2 passed in 2.00s", 0)}
    lanes[failing] = ("1 failed, 2 passed in 1.00s", 1)
    code, lines = gate(tmp_path, lanes["main"], lanes["vllm"])
    assert code != 0, lines
    closing = dict(line.split(": ", 1) for line in lines[-2:])
    assert closing[failing].startswith(f"1 failed, 2 passed in 1.00s ({failing} lane: exit 1 in ")


def test_the_cpu_of_a_process_is_counted_under_its_kind():
    """A process that burns 0.6 CPU s with `gcs_server` in its command line is counted under
    that kind, with at least 0.5 s of it (/proc counts in clock ticks; nothing is timed)."""
    sys.path.insert(0, str(ROOT / "tests" / "gate"))
    from cpu_by_process import Sampler

    burn = ("import sys, time\nwhile time.process_time() < 0.6: pass\n"
            "print('burnt', flush=True)\nsys.stdin.read()")  # fmt: skip
    sampler = Sampler()
    sampler.sample()
    proc = subprocess.Popen([sys.executable, "-c", burn, "gcs_server"], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout.readline() == "burnt\n"
        sampler.sample()
    finally:
        proc.communicate("")  # its stdin closed: it ends
    name, cpu = sampler.used()[proc.pid]
    assert name == "gcs_server" and cpu >= 0.5
    row = next(line.split() for line in sampler.table(50) if line.endswith(" gcs_server"))
    assert int(row[2]) >= 1  # the processes of that kind in the table


def test_a_model_server_interrupted_while_starting_is_stopped(tmp_path, monkeypatch):
    """Ctrl-C during a server fixture's start (`VLLMServer.wait`) ends the server too: it
    was left running, its parent gone, when a lane was interrupted there. The server here is
    a process that never ends by itself; the interrupt comes with the first look at it."""
    import urllib.request

    from api_server import VLLMServer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    server = VLLMServer.__new__(VLLMServer)
    server.port, server.api_key, server.log = 9, None, tmp_path / "server.log"
    server.proc = subprocess.Popen(["sleep", "600"])
    monkeypatch.setattr(urllib.request, "urlopen", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            server.wait()
        assert server.proc.poll() is not None
    finally:
        server.proc.kill()  # where the check failed: no process of the test outlives it


def test_the_lanes_virtualenv_is_exactly_its_lock():
    """`make setup` and `make setup-vllm` install torch with pip and the rest with uv: what
    the lane runs in is what its lock pins, nothing more or less (the lock is this same
    listing, written by `make lock`)."""
    from conftest import VLLM_LANE

    lock = ROOT / "requirements" / ("vllm.lock" if VLLM_LANE else "main.lock")
    pinned = {line for line in lock.read_text().splitlines() if not line.startswith("#")}
    freeze = [sys.executable, "-m", "pip", "freeze", "--exclude-editable"]
    installed = set(subprocess.run(freeze, capture_output=True, text=True, check=True,
                                   timeout=600).stdout.splitlines())  # fmt: skip
    assert installed == pinned, (sorted(installed - pinned), sorted(pinned - installed))


def test_the_suite_writes_the_bytecode_it_compiles():
    """The virtualenvs hold no bytecode (uv compiles none): the first import of each module
    writes it, however the caller's environment is set, for every process the suite starts."""
    import os

    assert not sys.dont_write_bytecode and "PYTHONDONTWRITEBYTECODE" not in os.environ
