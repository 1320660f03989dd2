"""Scoring with vLLM replicas on GPU actors: our request stage -> Ray's `ray.data.llm`
processor (its vLLM engine stage alone) -> our result stage, on the prompt stage's output.

Single pass. Rows already decided upstream (quarantined) stay in the same stream instead of
being split off and unioned back, which would make Ray run read/validate/prompt twice (once
per branch) unless the data were materialized. They enter the processor marked with
`__inference_error__` = SKIPPED: Ray's stages and postprocess let such rows through
untouched, so they never reach the engine, and the result stage clears the marker.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.data.schema import DECISION, PROMPT_TOKEN_IDS, TURN_OF, conform, turn_index
from alpagasus_ray.engines.base import JudgeOutput
from alpagasus_ray.engines.judgement import judgement_fields
from alpagasus_ray.engines.vllm import (
    ENGINE_COLUMNS,
    ERROR_COLUMN,
    RESERVED_COLUMNS,
    VLLMPostprocess,
    build_vllm_processor,
    require_vllm,
    sampling_params,
)
from alpagasus_ray.filter.stages.common import (
    column_or_nulls,
    pending_rows,
    stored_judgements,
    with_columns,
)
from alpagasus_ray.filter.stages.vllm_turns import TurnGather, explode_turns
from alpagasus_ray.text.tokenizer_probe import probe_tokenizer

SKIPPED = "alpagasus-ray: decided before scoring"
CARRIED_PREFIX = "__carried__"


class VLLMRequestStage:
    """Engine input for pending rows (the prompt stage's token ids and the sampling params);
    the skip marker for decided rows; input columns that the engine stage would read or
    overwrite are moved aside."""

    def __init__(self, judge: JudgeConfig, score_tokens: dict[int, int]):
        self.judge = judge
        self.params = sampling_params(judge.engine_judge(), score_tokens)

    def __call__(self, table: pa.Table) -> pa.Table:
        table = explode_turns(table)  # one engine row per judged turn, or per criterion
        table = table.rename_columns(
            [CARRIED_PREFIX + c if c in RESERVED_COLUMNS else c for c in table.column_names]
        )
        todo = set(pending_rows(table)) - self._kept(table)
        ids = column_or_nulls(table, PROMPT_TOKEN_IDS)
        n = table.num_rows
        pending = [i in todo and ids[i] is not None for i in range(n)]
        tokenized = [ids[i] if pending[i] else None for i in range(n)]
        params = [dict(self.params) if pending[i] else None for i in range(n)]
        errors = ["" if pending[i] else SKIPPED for i in range(n)]
        # The engine input carries the token ids; do not ship them through it twice.
        table = with_columns(table, {PROMPT_TOKEN_IDS: [None] * n})
        return (
            table.append_column("tokenized_prompt", pa.array(tokenized, type=pa.list_(pa.int64())))
            .append_column("sampling_params", pa.array(params))
            .append_column(ERROR_COLUMN, pa.array(errors, type=pa.string()))
        )

    def _kept(self, table: pa.Table) -> set[int]:
        """The criterion rows whose criterion an earlier attempt judged already (a retry):
        they pass the engine untouched, and the gather takes the kept judgement."""
        if not self.judge.criteria:
            return set()
        known = stored_judgements(table, self.judge)
        names = list(self.judge.criteria)
        marks = column_or_nulls(table, TURN_OF)
        criterion = [None if m is None else names[turn_index(m)] for m in marks]
        return {i for i, name in enumerate(criterion) if name and known[name][i] is not None}


class VLLMResultStage:
    """Rows that failed in the engine become `failed` (engine_error) through the shared
    judgement code; engine columns go; moved-aside columns come back; types are fixed, so
    every block has the same schema whether it held successes, failures or both."""

    def __init__(self, judge: JudgeConfig):
        self.cfg = judge

    def __call__(self, table: pa.Table) -> pa.Table:
        errors = column_or_nulls(table, ERROR_COLUMN)
        decided = column_or_nulls(table, DECISION)
        failed: dict[int, dict[str, Any]] = {}
        for i, err in enumerate(errors):
            if err and err != SKIPPED and decided[i] is None:
                out = JudgeOutput(error=str(err))
                failed[i] = judgement_fields(out, self.cfg.mode, {}, self.cfg.min_score_mass)
        if failed:
            names = next(iter(failed.values())).keys()
            cols = {name: column_or_nulls(table, name) for name in names}
            for i, fields in failed.items():
                for name, value in fields.items():
                    cols[name][i] = value
            table = with_columns(table, cols)
        table = table.drop_columns([c for c in table.column_names if c in ENGINE_COLUMNS])
        table = table.rename_columns([c.removeprefix(CARRIED_PREFIX) for c in table.column_names])
        return conform(table)


def judge_score_tokens(judge: JudgeConfig) -> dict[int, int]:
    """The judge tokenizer's score tokens, asked for by the request stage and read back by
    the postprocess (logprobs mode; generate mode parses text)."""
    if judge.mode != "logprobs":
        return {}
    facts = probe_tokenizer(judge.tokenizer or judge.model, judge.trust_remote_code, judge.scale)
    if facts["score_tokens_error"]:
        raise ValueError(facts["score_tokens_error"])
    return facts["score_tokens"]


def build_judge_processor(
    judge: JudgeConfig,
    task_cpus: float,
    score_tokens: dict[int, int],
    served_name: str | None = None,
) -> Any:
    """The `ray.data.llm` processor of a job (no vLLM import; it builds the plan only)."""
    scales = tuple(c.scale for c in judge.criteria.values())
    engine = judge.engine_judge()
    post = VLLMPostprocess(judge.mode, score_tokens, judge.min_score_mass, engine.scale, scales)
    return build_vllm_processor(engine, task_cpus, post, served_name)


def score_with_vllm(
    ds: Any, judge: JudgeConfig, task_cpus: float, served_name: str | None = None
) -> Any:
    """The prompt stage's dataset -> scored rows, ready for the decide stage."""
    require_vllm(judge)
    score_tokens = judge_score_tokens(judge.engine_judge())
    processor = build_judge_processor(judge, task_cpus, score_tokens, served_name)
    request = VLLMRequestStage(judge, score_tokens)
    ds = ds.map_batches(request, batch_format="pyarrow", num_cpus=task_cpus)
    ds = processor(ds)
    ds = ds.map_batches(VLLMResultStage(judge), batch_format="pyarrow", num_cpus=task_cpus)
    if judge.turns == "each" or judge.criteria:  # one actor: a row's prompt rows meet there
        gather = {"how": judge.turn_aggregate, "judge": judge}
        ds = ds.map_batches(TurnGather, fn_constructor_kwargs=gather, batch_format="pyarrow",
                            concurrency=1, num_cpus=task_cpus)  # fmt: skip
    return ds
