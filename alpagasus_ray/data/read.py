"""The input as a streaming Ray Dataset: the files a listing found, each read in its own
format by one datasource (`data/sources.py`)."""

from __future__ import annotations

from typing import Any

import fsspec

from alpagasus_ray.core.config import InputConfig, StorageConfig
from alpagasus_ray.data.io import is_local
from alpagasus_ray.data.listing import Listing, list_input_files


def read_input(
    cfg: InputConfig,
    storage: StorageConfig,
    num_cpus: float = 1.0,
    rows_per_block: int = 64,
    read_log: tuple[fsspec.AbstractFileSystem, str] | None = None,
    listing: Listing | None = None,
    progress: Any = None,
) -> Any:
    """A streaming Ray Dataset of raw rows in blocks of at most `rows_per_block` rows; the
    driver never holds the data.

    Bounded blocks are what let one big file fan out over every judge replica (a block goes
    to one replica) and keep a worker's memory independent of the file's size. Parquet rows
    keep their columns (and Arrow's); the records of JSON, JSON lines, CSV and TSV files become
    one row each with the record's text in `_json`, so a broken line is one quarantined row,
    not a failed read (`data/sources.py`). With `read_log` (filesystem, folder), each file
    read leaves its row count there (`read_log_records`).
    `listing` is what `list_input_files` returned, when the caller has listed already;
    `progress` a `filter.progress.ProgressCounter` that hears how far each file is read.
    """
    import ray.data

    from alpagasus_ray.data.sources import InputDatasource

    fs, files, _, _ = listing or list_input_files(cfg, storage)
    skip = cfg.on_unreadable_file == "skip"
    source = InputDatasource(
        files,
        declared=cfg.format,
        filesystem=fs,
        rows_per_block=rows_per_block,
        read_log=read_log,
        skip_unreadable=skip,
        progress=progress,
        local=is_local(fs),
    )
    ds = ray.data.read_datasource(source, num_cpus=num_cpus)
    ds = ds.limit(cfg.limit) if cfg.limit else ds
    # Streaming: splits big blocks (a one-row-group Parquet file) and merges tiny ones
    # (thousands of small shards) without materialising anything.
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    # Its tasks would ask for a whole CPU (`repartition` takes no remote args), which a small
    # cluster whose actors hold all but a fraction of a CPU never has: the job would hang.
    # Ray is pinned, so setting the logical operator's args directly is safe; a test checks it.
    ds._logical_plan.dag.ray_remote_args["num_cpus"] = num_cpus
    return ds
