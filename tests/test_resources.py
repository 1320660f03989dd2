"""A judge replica the cluster cannot run is refused before any row is read: at once when no
node can ever fit it (no autoscaler here), after `judge.startup_timeout_s` when it could fit
but never becomes free; and a CPU plan that leaves nothing for the read tasks is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli_refusal, filter_args, job_config
from helpers import write_jsonl

from alpagasus_ray.filter.resources import ResourceError, check_cpu_plan, replica_bundles

ROWS = [{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)} for i in range(8)]


def refused(capsys, tmp_path: Path, model: Path, *sets: str) -> tuple[str, float]:
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    args = filter_args(tmp_path, src, model, *sets, config="judge: {batch_size: 4}\n")
    err, elapsed = cli_refusal(capsys, args)
    assert not (tmp_path / "out").exists()
    return err, elapsed


def test_a_gpu_replica_on_a_cluster_without_gpus_fails_at_once(
    ray_session, capsys, tmp_path, tiny_judge
):
    err, elapsed = refused(
        capsys,
        tmp_path,
        tiny_judge,
        "judge.num_gpus_per_replica=1",
        "judge.num_cpus_per_replica=0.5",
    )
    assert err.startswith(
        "alpagasus-ray filter: judge replica (judge.num_gpus_per_replica): no node can ever "
        "fit {CPU: 0.5, GPU: 1} and the cluster has no autoscaler; its nodes have {CPU: 2"
    ), err


def test_a_replica_that_never_becomes_free_fails_after_the_startup_timeout(
    ray_session, capsys, tmp_path, tiny_judge
):
    import ray

    @ray.remote(num_cpus=1.5)
    class Hog:
        def ping(self) -> bool:
            return True

    hog = Hog.remote()
    ray.get(hog.ping.remote())
    try:
        err, elapsed = refused(
            capsys,
            tmp_path,
            tiny_judge,
            "judge.num_cpus_per_replica=1.0",
            "judge.startup_timeout_s=3",
        )
    finally:
        ray.kill(hog)
    assert err == (
        "alpagasus-ray filter: judge replica (judge.num_cpus_per_replica): waited 3 s "
        "(judge.startup_timeout_s) for 1 x {CPU: 1} (PACK); it never became free"
    ), err
    assert elapsed >= 3, elapsed  # it did wait the timeout out


def test_actors_that_leave_no_cpu_for_reading_are_refused(
    ray_session, capsys, tmp_path, tiny_judge
):
    err, elapsed = refused(
        capsys, tmp_path, tiny_judge, "judge.replicas=2", "judge.num_cpus_per_replica=0.9"
    )
    assert err.startswith("alpagasus-ray filter: CPU plan (judge.replicas x "), err
    assert "would hold 1.8 of the cluster's 2 CPUs" in err  # the HF replicas prompt too


def test_the_cpu_plan_counts_prompt_actors_where_a_run_starts_them(tiny_judge):
    """An API judge with a tokenizer builds its prompts on an actor (its 0.5 CPU counted);
    the HF judge's replicas build theirs, with no actor to count."""
    sets = {"judge__replicas": 2, "judge__num_cpus_per_replica": 0.8}
    check_cpu_plan(job_config("in.jsonl", "out", tiny_judge, **sets), 2.0)  # 1.6 + 0.25
    api = {"judge__engine": "openai", "judge__tokenizer": str(tiny_judge),
           "judge__api__base_url": "http://127.0.0.1:9/v1"}  # fmt: skip
    with pytest.raises(ResourceError, match="would hold 2.1 of the cluster's 2 CPUs"):
        check_cpu_plan(job_config("in.jsonl", "out", "served", **sets, **api), 2.0)


@pytest.mark.parametrize(
    ("sets", "bundles", "key"),
    [
        ({}, [{"CPU": 1.0}], "judge.num_cpus_per_replica"),
        (
            {"judge__engine": "vllm", "judge__vllm__accelerator_type": "H100"},
            [{"GPU": 1.0, "accelerator_type:H100": 0.001}],
            "judge.vllm.accelerator_type",
        ),
        (
            {"judge__engine": "vllm", "judge__vllm__tensor_parallel_size": 2},
            [{"GPU": 1, "CPU": 1}] * 2,
            "judge.vllm.tensor_parallel_size x pipeline_parallel_size",
        ),
    ],
)
def test_what_one_replica_asks_for(tmp_path, sets, bundles, key):
    cfg = job_config(str(tmp_path), str(tmp_path / "out"), tmp_path, **sets)
    cfg.judge.num_cpus_per_replica = 1.0
    assert replica_bundles(cfg)[0] == bundles
    assert replica_bundles(cfg)[2] == key
