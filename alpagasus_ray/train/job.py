"""`alpagasus-ray train`: instruction-tune a causal LM on the filter's kept rows with
transformers' `Trainer` inside Ray Train (`worker.py`). The driver checks the input before
Ray starts, tokenizes in Ray Data, splits the rows between the workers, and writes the run's
summary. Defaults are the paper's (Alpaca's) recipe.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from alpagasus_ray.data.io import filesystem, join, write_json
from alpagasus_ray.train.config import TrainConfig, export_uri, run_dir
from alpagasus_ray.train.data import (
    check_conversations,
    kept_input,
    trained_on,
    training_dataset,
)
from alpagasus_ray.train.metrics import SUMMARY_FILE, read_run_metrics, summarize

logger = logging.getLogger(__name__)


def trainer_class() -> Any:
    """Ray Train's `TorchTrainer` without its placement-group cleaner. The cleaner, a
    detached actor, asks Ray's state API each second whether the run's controller is alive,
    and reads an answer it did not get in time (a busy head node) as "dead": it then
    removes the workers' placement group, which kills a healthy run with "A worker health
    check failed" (seen in the tests on a loaded machine: its log says "Detected that the
    Ray Train controller actor ... is dead"). What it guards against, a controller that dies
    while its driver lives, leaves the group until the job ends, when Ray removes it."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]

    return Trainer


def worker_datasets(cfg: TrainConfig, ds: Any) -> tuple[dict[str, Any], Any, str]:
    """(datasets, DataConfig, the worker's dataset name with `{rank}`). Tokenized rows in
    Ray's object store are split once into equal fixed shards, so a worker sees the same
    rows in the same order in every run and a resume can skip what it trained on; rows
    re-read each epoch stream to whichever worker asks first."""
    from ray.train import DataConfig

    workers = cfg.run.num_workers
    if not cfg.data.cache_tokenized:
        return {"train": ds}, DataConfig(), "train"
    shards = ds.split(workers, equal=True)
    datasets = {f"train_{rank}": shard for rank, shard in enumerate(shards)}
    return datasets, DataConfig(datasets_to_split=[]), "train_{rank}"


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train; a rerun with the same run name and storage path resumes from its checkpoint."""
    import ray.train
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    from alpagasus_ray.core.runtime import init_ray
    from alpagasus_ray.train.worker import train_worker

    kept_input(cfg)  # an unfinished filter output is refused before Ray starts
    messages = check_conversations(cfg)  # and conversations for a model without a template
    init_ray(cfg.ray)
    started = time.time()
    ds, counts = training_dataset(cfg, messages)
    if counts["skipped_rows"]:
        logger.warning(
            "skipping %d of %d rows that cannot be trained on: %s",
            counts["skipped_rows"],
            counts["rows_read"],
            counts["skipped_by_reason"],
        )
    if counts["examples"] < cfg.run.num_workers:
        raise ValueError(f"{counts['examples']} trainable rows for {cfg.run.num_workers} workers")
    datasets, data_config, name = worker_datasets(cfg, ds)
    fs, storage = filesystem(cfg.run.storage_path, cfg.storage)
    remote = cfg.run.storage_path.startswith(("s3://", "s3a://"))
    resources = {"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if cfg.run.use_gpu else {})}
    trainer = trainer_class()(
        train_worker,
        train_loop_config={
            "cfg": cfg.model_dump(),  # SecretStr values stay secret in transit
            "examples": counts["examples"],
            "skipped_rows": counts["skipped_rows"],
            "dataset": name,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage,  # absolute: the config made it so
            storage_filesystem=PyFileSystem(FSSpecHandler(fs)) if remote else None,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        ),
        datasets=datasets,
        dataset_config=data_config,
    )
    result = trainer.fit()
    metrics = read_run_metrics(cfg)
    last = result.metrics or {}
    summary = {
        "run_dir": run_dir(cfg),
        "export": export_uri(cfg),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        **counts,
        "trained_on": trained_on(cfg),
        "resumed_from_epoch": last.get("resumed_from_epoch", 0),
        "resumed_from_step": last.get("resumed_from_step", 0),
        **summarize(metrics),
        "wall_seconds": round(time.time() - started, 3),
        "config": cfg.model_dump(mode="json"),
    }
    fs_run, path = filesystem(join(run_dir(cfg), SUMMARY_FILE), cfg.storage)
    write_json(fs_run, path, summary)
    return {**summary, "metrics": metrics}
