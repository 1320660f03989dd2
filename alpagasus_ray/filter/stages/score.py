"""Run the judge on the rows still pending and attach its scores (or the row's failure)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.data.schema import (
    DECISION,
    JUDGE_TEXT,
    NUM_OUTPUT_TOKENS,
    NUM_PROMPT_TOKENS,
    PROMPT_REQUEST,
    PROMPT_TOKEN_IDS,
    REASON,
    REASON_DETAIL,
    SCORE,
    SCORE_MASS,
    SCORE_PROBS,
)
from alpagasus_ray.engines import JudgeEngine, make_engine
from alpagasus_ray.engines.judgement import judgement_fields
from alpagasus_ray.filter.stages.common import column_or_nulls, pending_rows, with_columns


class ScoreStage:
    """One instance per judge replica (a Ray actor): the model loads once, then scores batches."""

    def __init__(self, judge: JudgeConfig, engine: JudgeEngine | None = None, api: Any = None):
        self.cfg = judge
        self.engine = engine or make_engine(judge, api)

    def __call__(self, table: pa.Table) -> pa.Table:
        todo = pending_rows(table)
        prompts = table.column(PROMPT_TOKEN_IDS).to_pylist()
        requests = column_or_nulls(table, PROMPT_REQUEST)
        outputs = (
            self.engine.judge([prompts[i] for i in todo], [requests[i] for i in todo])
            if todo
            else []
        )

        n = table.num_rows
        new: dict[str, list] = {
            c: [None] * n for c in (SCORE, SCORE_PROBS, SCORE_MASS, JUDGE_TEXT, NUM_OUTPUT_TOKENS)
        }
        cols = (DECISION, REASON, REASON_DETAIL, NUM_PROMPT_TOKENS)
        new.update({c: column_or_nulls(table, c) for c in cols})
        for i, out in zip(todo, outputs, strict=True):
            if out.num_prompt_tokens is not None:  # what the server counted (and billed)
                new[NUM_PROMPT_TOKENS][i] = out.num_prompt_tokens
            fields = judgement_fields(
                out, self.cfg.mode, self.engine.score_tokens, self.cfg.min_score_mass
            )
            for name, value in fields.items():
                new[name][i] = value
        return with_columns(table, new)
