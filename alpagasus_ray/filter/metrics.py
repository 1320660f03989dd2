"""Engine-side throughput for the manifest, computed from the written output alone.

Every row the engine judged carries `num_prompt_tokens` and `num_output_tokens`, so token
counts need no side channel from the GPU actors. The prefix-cache hit rate, which the output
cannot tell, comes from vLLM's own counters (`engines/vllm_metrics.py`); when those cannot be
read it is said so, never guessed.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.data.schema import NUM_OUTPUT_TOKENS, NUM_PROMPT_TOKENS
from alpagasus_ray.engines.vllm_metrics import PrefixCacheReading

log = logging.getLogger(__name__)

PREFIX_CACHE_NOTE = (
    "tokens whose KV came from the prefix cache / prompt tokens looked up, per replica, from "
    "vLLM's counters on Ray's metrics endpoints"
)
PREFIX_CACHE_NOT_READ = (
    "not read: judge.vllm.log_engine_metrics is off, or no node's metrics endpoint had this "
    "job's replicas (see the job log)"
)


def _rate(amount: float, seconds: float) -> float | None:
    return round(amount / seconds, 3) if seconds > 0 else None


def engine_metrics(
    table: pa.Table,
    seconds: float,
    judge: JudgeConfig,
    prefix_cache: PrefixCacheReading | None = None,
) -> dict[str, Any]:
    """Tokens in and out, examples/s and tokens/s over the streaming job's wall time.

    The wall time covers read, prompt, score and write together (they overlap in a stream),
    so the rates are a floor on what the engine alone sustained.
    """
    judged = table.filter(pc.is_valid(table.column(NUM_OUTPUT_TOKENS)))
    rows = judged.num_rows
    tokens_in = int(pc.sum(judged.column(NUM_PROMPT_TOKENS)).as_py() or 0)
    tokens_out = int(pc.sum(judged.column(NUM_OUTPUT_TOKENS)).as_py() or 0)
    metrics: dict[str, Any] = {
        "engine": judge.engine,
        "examples_judged": rows,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "wall_seconds": round(seconds, 3),
        "examples_per_s": _rate(rows, seconds),
        "input_tokens_per_s": _rate(tokens_in, seconds),
        "output_tokens_per_s": _rate(tokens_out, seconds),
    }
    if judge.engine == "vllm":
        metrics["gpus_per_replica"] = (
            judge.vllm.tensor_parallel_size * judge.vllm.pipeline_parallel_size
        )
        metrics["prefix_caching"] = judge.vllm.enable_prefix_caching
        if prefix_cache is None:
            metrics["prefix_cache_hit_rate"] = None
            metrics["prefix_cache_note"] = PREFIX_CACHE_NOT_READ
        else:
            metrics["prefix_cache_hit_rate"] = prefix_cache.hit_rate
            metrics["prefix_cache_hit_tokens"] = prefix_cache.hits
            metrics["prefix_cache_query_tokens"] = prefix_cache.queries
            metrics["prefix_cache_replicas"] = prefix_cache.replicas
            metrics["prefix_cache_note"] = PREFIX_CACHE_NOTE
    elif judge.engine == "openai":
        api = judge.api
        metrics["cost"] = round(api.cost(tokens_in, tokens_out), 6)
        metrics["cost_note"] = (
            f"server-reported usage x {api.price_input_per_mtok:g} per 1M prompt tokens + "
            f"{api.price_output_per_mtok:g} per 1M answer tokens (judge.api prices)"
        )
        metrics["prefix_cache_hit_rate"] = None
        metrics["prefix_cache_note"] = "not read: the API server keeps its own counters"
    else:
        metrics["prefix_cache_hit_rate"] = None
        metrics["prefix_cache_note"] = f"not applicable: the {judge.engine} engine has none"
    return metrics


def stage_metrics(ds: Any) -> list[dict[str, Any]]:
    """Each Ray Data operator of the finished job, in pipeline order: the rows it took in
    (made, for the read), its wall time, its rows/s, and its rows/s per task (the busy time
    of its tasks summed: one worker's speed). The slowest stage per task is where more
    workers help; the lowest rows/s end to end is what the job waited on."""
    stages: list[dict[str, Any]] = []

    def walk(summary: Any) -> None:
        for parent in summary.parents:
            walk(parent)
        for op in summary.operators_stats:
            made = op.output_num_rows.sum if op.output_num_rows else 0
            rows = op.total_input_num_rows or made
            busy = op.wall_time.sum if op.wall_time else 0.0
            stages.append(
                {
                    "stage": op.operator_name,
                    "rows": rows,
                    "wall_s": round(op.time_total_s, 3),
                    "rows_per_s": _rate(rows, op.time_total_s),
                    "rows_per_task_s": _rate(rows, busy),
                }
            )

    try:
        walk(ds.get_stats_summary())
    except Exception as e:  # noqa: BLE001 - figures must never cost a finished run its manifest
        log.warning("no per-stage figures for the manifest: %s", e)
        return []
    return stages
