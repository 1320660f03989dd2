"""On a cluster, a local input or output must be on a disk that every node shares.

The test cluster's nodes share this machine's disk, so a node that cannot see the driver's
files is made as a real one is: the driver runs in a mount namespace of its own, with a
tmpfs over one folder; what it writes there only it sees, while the cluster's workers (the
raylet's processes, outside that namespace) find the folder empty. What this proves: the job
asks the nodes, not the driver's disk, and says so in one line before a row is judged, and
where a batch is written for a node that joins later. What it cannot: an NFS mount's own
caching between machines, which the check's file read meets as any reader would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import filter_args, session_cluster_env
from helpers import write_jsonl

from alpagasus_ray.core.errors import StorageNotShared
from alpagasus_ray.data.io import READ_LOG_DIR, RUN_MARKER
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.shared_storage import OnSharedDisk, unseen

HINT = (
    "on a cluster, a local path must be on a disk every node shares (NFS or another shared "
    "mount); use one, or s3://"
)
# The driver with the start's check taken away: as if the nodes that write joined after it.
LATE_NODES = (
    "import sys; import alpagasus_ray.filter.job as p; "
    "p.check_nodes_see = lambda *a: None; from alpagasus_ray.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


def namespaces_allowed() -> bool:
    cmd = ["unshare", "--mount", "--propagation", "private", "true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    except FileNotFoundError:
        return False


needs_namespace = pytest.mark.skipif(
    not namespaces_allowed(), reason="needs a mount namespace (unshare, as root)"
)


def private_driver(private: Path, args: list[str], before: str = "", code: str = "") -> tuple:
    """Run the CLI on the session's Ray from a mount namespace where `private` is a tmpfs;
    `before`, a shell line run there first. Returns (exit code, stderr's last line)."""
    python = [sys.executable, "-c", code] if code else [sys.executable, "-m", "alpagasus_ray.cli"]
    script = f'mount -t tmpfs tmpfs "$0" && {before or "true"} && exec "$@"'
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(private)]
    done = subprocess.run(
        [*cmd, *python, *args], capture_output=True, text=True, timeout=900,
        env=session_cluster_env(),
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    return done.returncode, lines[-1] if lines else "", done.stderr


def the_node() -> str:
    import ray

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    return f"{node['NodeID'][:12]} ({node['NodeManagerAddress']})"


@needs_namespace
def test_an_output_the_nodes_cannot_see_is_refused_at_the_start(ray_session, stand_in, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(20, seed=40))
    private = tmp_path / "private"
    private.mkdir()
    args = filter_args(tmp_path, src, stand_in, f"output.uri={private / 'out'}")
    code, line, err = private_driver(private, args)
    assert code == 2, err
    assert line == (
        f"alpagasus-ray filter: output (output.uri): node {the_node()} does not see "
        f"{private / 'out'}: {HINT}"
    )
    assert list(private.iterdir()) == []  # nothing reached the disk the nodes share


@needs_namespace
def test_an_input_the_nodes_cannot_see_is_refused_at_the_start(ray_session, stand_in, tmp_path):
    src = write_jsonl(tmp_path / "src.jsonl", synthetic_examples(20, seed=41))
    private = tmp_path / "private"
    private.mkdir()
    args = filter_args(tmp_path, private / "in.jsonl", stand_in)
    code, line, err = private_driver(private, args, before=f'cp "{src}" "$0/in.jsonl"')
    assert code == 2, err
    assert line == (
        f"alpagasus-ray filter: input (input.uri): node {the_node()} does not see "
        f"{private / 'in.jsonl'}: {HINT}"
    )
    out = tmp_path / "out"  # claimed, nothing judged: no data, no manifest
    assert sorted(p.name for p in out.iterdir()) == sorted([RUN_MARKER, READ_LOG_DIR]), err
    assert list((out / READ_LOG_DIR).iterdir()) == []


@needs_namespace
@pytest.mark.parametrize("seen", ["nothing", "its read log"])
def test_a_node_that_joins_later_fails_the_job_in_one_line(ray_session, stand_in, tmp_path, seen):
    """Without the start's check, the first node that cannot see the output stops the job
    in one line, naming it, instead of writing rows the output would never list: where it
    logs a file read, or, when it sees the read log's folder (made on its own disk here),
    where it writes a batch."""
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(20, seed=42))
    private = tmp_path / "private"
    theirs = private / "out" / READ_LOG_DIR if seen == "its read log" else private
    theirs.mkdir(parents=True)
    args = filter_args(tmp_path, src, stand_in, f"output.uri={private / 'out'}")
    code, line, err = private_driver(private, args, code=LATE_NODES)
    assert code == 2, err
    where = private / "out" / (READ_LOG_DIR if seen == "nothing" else "")
    assert line == (
        f"alpagasus-ray filter: output (output.uri): node {the_node()} does not see {where}: {HINT}"
    )
    if seen == "nothing":
        assert list(private.iterdir()) == []
    else:  # the nodes logged the read on their own disk, and wrote no row
        assert [p.name for p in (private / "out").iterdir()] == [READ_LOG_DIR]
        (log,) = (private / "out" / READ_LOG_DIR).iterdir()
        assert json.loads(log.read_text())["rows"] == 20


@needs_namespace
def test_a_node_that_joins_later_never_skips_an_input_it_cannot_see(
    ray_session, stand_in, tmp_path
):
    """Without the start's check, a read on a node that cannot find a local file the driver
    listed stops the job naming it, even with `on_unreadable_file: skip`: the file is not
    unreadable, this node does not share the driver's disk."""
    src = write_jsonl(tmp_path / "src.jsonl", synthetic_examples(20, seed=43))
    private = tmp_path / "private"
    private.mkdir()
    args = filter_args(tmp_path, private / "in.jsonl", stand_in,
                       "input.on_unreadable_file=skip")  # fmt: skip
    code, line, err = private_driver(
        private, args, before=f'cp "{src}" "$0/in.jsonl"', code=LATE_NODES
    )
    assert code == 2, err
    assert line == (
        f"alpagasus-ray filter: input (input.uri): node {the_node()} does not see "
        f"{private / 'in.jsonl'}: {HINT}"
    )
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_what_a_node_cannot_see(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    data = tmp_path / "in.jsonl"
    data.write_text("{}\n")
    (root / RUN_MARKER).write_text(json.dumps({"run_id": "ours"}))
    sizes = {str(data): 3}
    assert unseen(str(root), sizes) is None
    assert unseen(None, sizes) is None  # an output on S3: only the input is looked for
    # Any claim will do: another run's is a takeover, which the run's end refuses
    # (test_scale.py), not a disk this node lacks, and the write goes on for it.
    (root / RUN_MARKER).write_text(json.dumps({"run_id": "another run's"}))
    assert unseen(str(root), sizes) is None
    assert unseen(str(tmp_path / "gone"), {}) == ("output.uri", str(tmp_path / "gone"))
    assert unseen(str(root), {str(data): 4}) == ("input.uri", str(data))  # not that file
    assert unseen(str(root), {str(tmp_path / "x"): 1}) == ("input.uri", str(tmp_path / "x"))
    (root / RUN_MARKER).unlink()
    assert unseen(str(root), {}) == ("output.uri", str(root))


def test_the_write_stage_passes_rows_through_or_refuses(ray_session, tmp_path):
    import pyarrow as pa

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / RUN_MARKER).write_text(json.dumps({"run_id": "ours"}))
    table = pa.table({"id": ["a", "b"]})
    assert OnSharedDisk(str(tmp_path / "out"))(table) is table
    with pytest.raises(StorageNotShared, match=r"^output \(output\.uri\): node \w+ \(.+\) does"):
        OnSharedDisk(str(tmp_path / "elsewhere"))(table)
