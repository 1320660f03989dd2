"""The README's first command: the demo runs offline on a fresh machine."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # end to end; deselect with -m 'not slow'


def test_demo_command(tmp_path):
    exe = shutil.which("alpagasus-ray", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "alpagasus_ray.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*cmd, "demo", "--output", str(tmp_path / "demo"), "--rows", "40"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows read 46 = kept" in proc.stdout  # 40 synthetic + 6 bad rows
    assert "RANDOM" in proc.stdout
    # A newcomer sees the progress line and the summary, not Ray's per-operator stats, nor a
    # progress bar for saving the tiny judge.
    assert "Operator 1" not in proc.stdout + proc.stderr
    assert "Writing model shards" not in proc.stderr
    # Nor Ray's C++ warning about restartable actors' arguments (ray-project/ray#53727),
    # which Ray Data's actor pools raise on every run: it stays in Ray's log files.
    assert "core_worker.cc" not in proc.stderr and "max_restarts > 0" not in proc.stderr
    manifest = json.loads((tmp_path / "demo" / "filtered" / "manifest.json").read_text())
    assert manifest["invariant_ok"] and manifest["counts"]["quarantined"] == 6
    assert (tmp_path / "demo" / "filtered" / "score_histogram.png").stat().st_size > 0
