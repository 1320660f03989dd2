"""Checks that the cluster can run one judge replica before any row is read.

Ray waits forever for an actor no node can fit ("No available node types can fulfill
resource request", every 35 s). So, after Ray starts and before the output is touched:

- a replica that no alive node could ever fit, on a cluster without an autoscaler, is
  refused at once, naming the key and the resource;
- otherwise one replica's resources are reserved with a placement group and released again;
  if that takes longer than `judge.startup_timeout_s` (an autoscaler that cannot get the
  node, an exhausted quota, a mistyped accelerator type), the job fails naming what it
  waited for;
- on a fixed cluster the fixed actor pools must leave `ray.task_cpus` free for the read,
  validate and write tasks, or the job would deadlock with its actors idle.
"""

from __future__ import annotations

import json

from alpagasus_ray.engines.vllm import gpus_per_replica, placement_group_config
from alpagasus_ray.filter.config import FilterJobConfig

AUTOSCALER_STATUS_KEY = b"__autoscaling_status"  # written by Ray's autoscaler monitor
READONLY_NODE_TYPE = "node_"  # how that monitor names the nodes of a cluster it cannot grow


class ResourceError(RuntimeError):
    """The cluster cannot run a judge replica, said in one line."""


def replica_bundles(cfg: FilterJobConfig) -> tuple[list[dict[str, float]], str, str]:
    """(bundles of one replica, placement strategy, the config key that asks for them)."""
    judge = cfg.judge
    if judge.engine == "vllm":
        gpus = gpus_per_replica(judge)
        pg = placement_group_config(judge)
        bundle: dict[str, float] = dict(pg["bundle_per_worker"]) if pg else {"GPU": 1.0}
        if judge.vllm.accelerator_type:
            bundle[f"accelerator_type:{judge.vllm.accelerator_type}"] = 0.001
        key = "judge.vllm.accelerator_type" if judge.vllm.accelerator_type else "judge.engine=vllm"
        if gpus > 1:
            key = "judge.vllm.tensor_parallel_size x pipeline_parallel_size"
        return [bundle] * gpus, pg["strategy"] if pg else "PACK", key
    bundle = {"CPU": judge.num_cpus_per_replica}
    key = "judge.num_cpus_per_replica"
    if judge.num_gpus_per_replica:
        bundle["GPU"] = judge.num_gpus_per_replica
        key = "judge.num_gpus_per_replica"
    return [bundle], "PACK", key


def _has_autoscaler() -> bool:
    """Whether an autoscaler can add nodes to this cluster. Ray runs a monitor on every head
    node, even a local one; without a cluster config it only reports the nodes it has,
    under anonymous types (`node_<id>`), while a real one names the configured node types."""
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        if is_autoscaler_v2():
            return True  # only enabled with a cluster config (cluster launcher, KubeRay)
        report = json.loads(_internal_kv_get(AUTOSCALER_STATUS_KEY) or "{}")
    except Exception:  # noqa: BLE001 - no readable status: treat the cluster as fixed
        return False
    report = report.get("autoscaler_report") or {}
    types = {*(report.get("active_nodes") or {}), *(report.get("idle_nodes") or {})}
    return bool(report.get("pending_launches")) or any(
        not name.startswith(READONLY_NODE_TYPE) for name in types
    )


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(name, 0.0) >= amount for name, amount in bundle.items())


def _describe(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if not k.startswith(("node:", "memory", "object"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def check_resources(cfg: FilterJobConfig) -> None:
    """Raise `ResourceError` when a judge replica cannot start; see the module docstring."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles, strategy, key = replica_bundles(cfg)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    autoscaler = _has_autoscaler()
    if not autoscaler:
        if not any(_fits(bundles[0], node) for node in nodes):
            have = "; ".join(_describe(n) for n in nodes) or "no alive node"
            raise ResourceError(
                f"judge replica ({key}): no node can ever fit {_describe(bundles[0])} and the "
                f"cluster has no autoscaler; its nodes have {have}"
            )
        check_cpu_plan(cfg, sum(n.get("CPU", 0.0) for n in nodes))
    pg = placement_group(bundles, strategy=strategy, name="alpagasus-ray-startup-check")
    timeout = cfg.judge.startup_timeout_s
    try:
        ready, _ = ray.wait([pg.ready()], timeout=timeout)
    finally:
        remove_placement_group(pg)
    if not ready:
        waited = "the autoscaler did not provide it" if autoscaler else "it never became free"
        raise ResourceError(
            f"judge replica ({key}): waited {timeout:g} s (judge.startup_timeout_s) for "
            f"{len(bundles)} x {_describe(bundles[0])} ({strategy}); {waited}"
        )


def check_cpu_plan(cfg: FilterJobConfig, cluster_cpus: float) -> None:
    """The fixed actor pools plus one light task must fit the cluster's CPUs."""

    def low(value: int | tuple[int, int]) -> int:
        return value if isinstance(value, int) else value[0]

    judge_cpus = 0.0 if cfg.judge.engine == "vllm" else cfg.judge.num_cpus_per_replica
    prompt_cpus = cfg.ray.prompt_worker_cpus if cfg.judge.prompts_on_actors() else 0.0
    held = low(cfg.judge.replicas) * judge_cpus + low(cfg.ray.prompt_workers) * prompt_cpus
    if held + cfg.ray.task_cpus > cluster_cpus + 1e-9:
        raise ResourceError(
            f"CPU plan (judge.replicas x judge.num_cpus_per_replica + ray.prompt_workers x "
            f"ray.prompt_worker_cpus + ray.task_cpus): the actors would hold {held:g} of the "
            f"cluster's {cluster_cpus:g} CPUs, leaving less than ray.task_cpus="
            f"{cfg.ray.task_cpus:g} for reading and writing: the job would never progress"
        )
