"""Free-text generation (answers, pairwise judgements) on the filter's vLLM engine stage.

The engine config, sampling params (greedy, `max_new_tokens`) and column contract are the
ones `engines/vllm.py` builds for the judge; this only adapts rows in and text out, so the
evaluation runs on exactly the vLLM setup the filter uses. vllm is imported by Ray's stage on
the GPU actors, never here.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.engines.vllm import (
    ENGINE_COLUMNS,
    ERROR_COLUMN,
    build_vllm_processor,
    require_vllm,
    sampling_params,
)
from alpagasus_ray.evaluate.columns import GEN_ERROR, GEN_TEXT, GEN_TOKENS, PROMPT_IDS

SKIPPED = "alpagasus-ray: no prompt"


class VLLMRequest:
    """Token ids and sampling params for rows with a prompt; the skip marker for the rest
    (Ray's stages pass marked rows through untouched)."""

    def __init__(self, cfg: JudgeConfig):
        self.params = sampling_params(cfg)

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = table.column(PROMPT_IDS).to_pylist()
        params = [dict(self.params) if x is not None else None for x in ids]
        marks = ["" if x is not None else SKIPPED for x in ids]
        return (
            table.drop_columns([PROMPT_IDS])
            .append_column("tokenized_prompt", pa.array(ids, pa.list_(pa.int64())))
            .append_column("sampling_params", pa.array(params))
            .append_column(ERROR_COLUMN, pa.array(marks, pa.string()))
        )


def postprocess(row: dict[str, Any]) -> dict[str, Any]:
    """Generated text and token count; every engine column goes."""
    kept = {k: v for k, v in row.items() if k not in ENGINE_COLUMNS}
    kept[GEN_TEXT] = row.get("generated_text") or ""
    kept[GEN_TOKENS] = int(row.get("num_generated_tokens") or 0)
    return kept


def vllm_result(table: pa.Table) -> pa.Table:
    """Engine errors into _gen_error (rows Ray passed through skip postprocess); typed columns."""
    n = table.num_rows
    marks = table.column(ERROR_COLUMN).to_pylist() if ERROR_COLUMN in table.column_names else []
    errors = table.column(GEN_ERROR).to_pylist()
    names = table.column_names
    text = table.column(GEN_TEXT).to_pylist() if GEN_TEXT in names else [None] * n
    ntok = table.column(GEN_TOKENS).to_pylist() if GEN_TOKENS in names else [None] * n
    for i, m in enumerate(marks):
        if m and m != SKIPPED and errors[i] is None:
            errors[i], text[i] = str(m), None
    table = table.drop_columns([c for c in table.column_names if c in ENGINE_COLUMNS])
    table = table.drop_columns(
        [c for c in (GEN_TEXT, GEN_TOKENS, GEN_ERROR) if c in table.column_names]
    )
    return (
        table.append_column(GEN_ERROR, pa.array(errors, pa.string()))
        .append_column(GEN_TEXT, pa.array(text, pa.string()))
        .append_column(GEN_TOKENS, pa.array(ntok, pa.int64()))
        .append_column(PROMPT_IDS, pa.nulls(n, pa.list_(pa.int64())))
    )


def generate_with_vllm(ds: Any, cfg: JudgeConfig, task_cpus: float) -> Any:
    """The prompt stage's rows -> rows with _gen_text / _gen_tokens / _gen_error."""
    require_vllm(cfg)
    processor = build_vllm_processor(cfg, task_cpus, postprocess)
    ds = ds.map_batches(VLLMRequest(cfg), batch_format="pyarrow", num_cpus=task_cpus)
    return processor(ds).map_batches(vllm_result, batch_format="pyarrow", num_cpus=task_cpus)
