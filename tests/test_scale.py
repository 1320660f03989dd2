"""At scale: one big file fans out over every judge replica in bounded blocks, and the output
is never destroyed or called complete by mistake."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import job_config
from helpers import write_jsonl

from alpagasus_ray.core.config import StorageConfig
from alpagasus_ray.data.io import (
    RUN_MARKER,
    OutputTakenError,
    check_claim,
    claim_output,
    filesystem,
)
from alpagasus_ray.data.read import read_input
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.preflight import PreflightError
from alpagasus_ray.filter.stages import PromptStage, ScoreStage, ValidateStage

ROWS = 600


WAIT_S = 600  # far above normal: a loaded machine must not decide the test


def rendezvous(replicas: int):
    """An actor that holds each replica's first batch until `replicas` replicas hold one at
    the same moment. So the test asks whether every replica was busy at once, whatever the
    machine's load: a file that did not fan out leaves one replica waiting, and it fails."""
    import asyncio

    import ray

    @ray.remote(num_cpus=0)
    class Rendezvous:
        def __init__(self) -> None:
            self.arrived: set[str] = set()
            self.everyone = asyncio.Event()

        async def arrive(self, replica: str) -> int:
            self.arrived.add(replica)
            if len(self.arrived) >= replicas:
                self.everyone.set()
            await asyncio.wait_for(self.everyone.wait(), WAIT_S)
            return len(self.arrived)

    return Rendezvous.remote()


def tagged_score_stage() -> type:
    """The job's score stage, plus the replica (actor) that judged each row; its first batch
    waits at the rendezvous. Defined in a function so that Ray ships the class by value:
    workers cannot import a test module."""

    class TaggedScoreStage(ScoreStage):
        def __init__(self, judge, meeting) -> None:
            super().__init__(judge)
            self.meeting, self.met = meeting, False

        def __call__(self, table: pa.Table) -> pa.Table:
            import ray

            actor = ray.get_runtime_context().get_actor_id()
            if not self.met:
                ray.get(self.meeting.arrive.remote(actor))
                self.met = True
            out = super().__call__(table)
            return out.append_column("replica", pa.array([actor] * out.num_rows))

    return TaggedScoreStage


def one_file(tmp_path, layout: str):
    rows = synthetic_examples(ROWS, seed=4)
    if layout == "jsonl":
        return write_jsonl(tmp_path / "one.jsonl", rows)
    if layout == "json-array":
        path = tmp_path / "one.json"
        path.write_text(json.dumps(rows))
        return path
    path = tmp_path / "one.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=ROWS)  # one row group
    return path


@pytest.mark.parametrize("layout", ["jsonl", "json-array", "parquet"])
def test_one_file_fans_out_over_every_replica(ray_session, stand_in, tmp_path, layout):
    src = one_file(tmp_path, layout)
    cfg = job_config(str(src), str(tmp_path / "out"), stand_in, judge__batch_size=25)
    judge = cfg.judge
    ds = read_input(cfg.input, cfg.storage, 0.25, rows_per_block=judge.batch_size)
    ds = ds.map_batches(ValidateStage(cfg.input.columns), batch_format="pyarrow", num_cpus=0.25)
    ds = ds.map_batches(
        PromptStage, fn_constructor_kwargs={"judge": judge}, batch_format="pyarrow",
        batch_size=judge.batch_size, concurrency=1, num_cpus=0.5,
    )  # fmt: skip
    meeting = rendezvous(2)
    ds = ds.map_batches(
        tagged_score_stage(), fn_constructor_kwargs={"judge": judge, "meeting": meeting},
        batch_format="pyarrow", batch_size=judge.batch_size, concurrency=2, num_cpus=0.25,
    )  # fmt: skip
    replicas = Counter(r["replica"] for r in ds.select_columns(["replica"]).take_all())
    assert sum(replicas.values()) == ROWS
    # Both replicas held a batch of the one file at the same moment (the rendezvous let
    # neither go on before), so both judged rows of it. How the rest is shared is up to the
    # machine's load: the first replica back takes the next batch.
    assert len(replicas) == 2, replicas


def test_blocks_are_bounded_whatever_the_layout(ray_session, tmp_path):
    for layout in ("jsonl", "json-array", "parquet"):
        src = one_file(tmp_path, layout)
        cfg = job_config(str(src), str(tmp_path / "out"), tmp_path)
        sizes = [
            b.num_rows
            for b in read_input(cfg.input, cfg.storage, 0.25, 50).iter_batches(
                batch_size=None, batch_format="pyarrow"
            )
        ]
        assert sum(sizes) == ROWS and max(sizes) <= 50 and len(sizes) >= ROWS // 50, sizes


def test_a_read_task_gathers_at_most_a_bounded_block(ray_session, tmp_path):
    """Ray gathers what a read task yields into blocks of up to `target_max_block_size`
    (128 MiB by default) before they leave it: the job lowers that bound, and a row larger
    than the bound still arrives whole."""
    import ray.data

    from alpagasus_ray.core.config import RayConfig
    from alpagasus_ray.core.runtime import BLOCK_BYTES, init_ray

    init_ray(RayConfig())
    rows = synthetic_examples(40, seed=5)
    rows[7]["output"] = "x" * (BLOCK_BYTES + 2**20)  # one row over the bound
    src = write_jsonl(tmp_path / "big.jsonl", rows)
    cfg = job_config(str(src), str(tmp_path / "out"), tmp_path)
    ds = read_input(cfg.input, cfg.storage, 0.25, 8)
    assert ray.data.DataContext.get_current().target_max_block_size == BLOCK_BYTES <= 32 * 2**20
    assert ds.context.target_max_block_size == BLOCK_BYTES
    got = [json.loads(r) for r in ds.to_pandas()["_json"]]

    def whole(row: dict) -> str:  # the whole row: several rows share an instruction
        return json.dumps(row, sort_keys=True)

    assert sorted(got, key=whole) == sorted(rows, key=whole)  # blocks arrive in any order


def test_wrong_input_leaves_the_previous_output_intact(ray_session, stand_in, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(20, seed=1))
    out = tmp_path / "out"
    first = run_filter(job_config(str(src), str(out), stand_in))
    assert first.status == "complete"
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(PreflightError, match=r"input \(input.uri\): .* does not exist"):
        run_filter(job_config(str(tmp_path / "typo.jsonl"), str(out), stand_in))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert json.loads((out / "manifest.json").read_text())["counts"] == first.counts


def test_a_claim_taken_by_another_run_is_refused(tmp_path):
    fs, root = filesystem(str(tmp_path), StorageConfig())
    mine = claim_output(fs, root)
    check_claim(fs, root, mine)  # still ours: fine
    other = claim_output(fs, root)  # another run's start (its overwrite, then its claim)
    with pytest.raises(OutputTakenError, match=other):
        check_claim(fs, root, mine)
    (tmp_path / RUN_MARKER).unlink()
    with pytest.raises(OutputTakenError, match="marker removed"):
        check_claim(fs, root, other)


def test_a_run_whose_output_is_taken_over_writes_no_manifest(ray_session, stand_in, tmp_path):
    """A second run starting into the same output mid-run: the first one does not end with
    a manifest that calls mixed data complete."""
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(200, seed=2))
    out = tmp_path / "out"
    cfg = job_config(str(src), str(out), stand_in, judge__batch_size=8)
    errors: list[BaseException] = []

    def first_run() -> None:
        try:
            run_filter(cfg)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            errors.append(e)

    thread = threading.Thread(target=first_run)
    thread.start()
    while not (out / RUN_MARKER).exists() and thread.is_alive():  # however slow the machine
        time.sleep(0.05)
    assert (out / RUN_MARKER).exists()
    fs, root = filesystem(str(out), StorageConfig())
    claim_output(fs, root)  # what a second run does when it starts into this output
    thread.join(timeout=900)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], OutputTakenError), errors
    assert not (out / "manifest.json").exists()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("layout", ["jsonl", "parquet"])
def test_reading_needs_no_whole_cpu(ray_session, tmp_path, layout):
    """Actors holding all but half a CPU (a judge replica and the prompt worker on a small
    machine) leave the read and its re-blocking enough to run: no task waits for a whole CPU.
    Before, this hung forever."""
    import ray

    @ray.remote(num_cpus=1.5)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    try:
        ray.get(holder.ready.remote())
        src = one_file(tmp_path, layout)
        cfg = job_config(str(src), str(tmp_path / "out"), tmp_path)
        ds = read_input(cfg.input, cfg.storage, 0.25, 50)
        blocks = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        assert sum(b.num_rows for b in blocks) == ROWS
    finally:
        ray.kill(holder)
