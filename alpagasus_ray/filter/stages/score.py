"""Run the judge on the rows still pending and attach its scores (or the row's failure)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.data.schema import (
    DECISION,
    JUDGE_TEXT,
    NUM_OUTPUT_TOKENS,
    NUM_PROMPT_TOKENS,
    REASON,
    REASON_DETAIL,
    SCORE,
    SCORE_MASS,
    SCORE_PROBS,
    TURN_SCORES,
)
from alpagasus_ray.engines import JudgeEngine, JudgeOutput, make_engine
from alpagasus_ray.engines.judgement import judgement_fields
from alpagasus_ray.filter.criteria import criteria_types, fold_criteria
from alpagasus_ray.filter.stages.common import (
    column_or_nulls,
    pending_rows,
    row_prompts,
    stored_judgements,
    with_columns,
)
from alpagasus_ray.filter.stages.prompt import PromptStage
from alpagasus_ray.filter.turns import combine


class ScoreStage:
    """One instance per judge replica (a Ray actor): the model loads once, then scores batches.
    With `prompts` (`JudgeConfig.prompts_in_replica`) it builds each batch's prompts first,
    as the prompt stage would (`stages/prompt.py`)."""

    def __init__(
        self,
        judge: JudgeConfig,
        engine: JudgeEngine | None = None,
        api: Any = None,
        prompts: bool = False,
    ):
        self.cfg = judge
        self.engine = engine or make_engine(judge.engine_judge(), api)
        self.criteria = list(judge.criterion_judges().values())  # a row's prompts' judges
        self.types = criteria_types(judge)
        self.prompt_stage = PromptStage(judge) if prompts else None

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.prompt_stage is not None:
            table = self.prompt_stage(table)
        todo = pending_rows(table)
        prompts, requests, turned = row_prompts(table, todo)
        stored = self._stored(table, todo, prompts)
        sent = [(p, r) for row in zip(prompts, requests, stored, strict=True)
                for p, r, kept in zip(*row, strict=True) if kept is None]  # fmt: skip
        flat, flat_requests = [p for p, _ in sent], [r for _, r in sent]
        outputs = iter(self.engine.judge(flat, flat_requests) if flat else [])

        n = table.num_rows
        names = (SCORE, SCORE_PROBS, SCORE_MASS, JUDGE_TEXT, NUM_OUTPUT_TOKENS, TURN_SCORES,
                 *self.types)  # fmt: skip
        new: dict[str, list] = {c: [None] * n for c in names}
        cols = (DECISION, REASON, REASON_DETAIL, NUM_PROMPT_TOKENS)
        new.update({c: column_or_nulls(table, c) for c in cols})
        for i, mine, is_turns, kept in zip(todo, prompts, turned, stored, strict=True):
            for name, value in self._row(mine, outputs, is_turns, kept).items():
                new[name][i] = value
        return with_columns(table, new, self.types)

    def _stored(self, table: pa.Table, todo: list[int], prompts: list) -> list[list]:
        """Per pending row, per prompt: a criterion's judgement kept from an earlier
        attempt (not sent again), or None."""
        if not self.criteria:
            return [[None] * len(p) for p in prompts]
        known = stored_judgements(table, self.cfg)
        return [[known[name][i] for name in self.cfg.criteria] for i in todo]

    def _row(
        self, prompts: list, outputs: Iterator[JudgeOutput], is_turns: bool, stored: list
    ) -> dict:
        """One row's columns from the outputs of its prompts: its criteria's (a kept one
        as it was), its turns' or its own."""
        if self.criteria:
            judged = [kept if kept is not None else self._fields(next(outputs), judge)
                      for judge, kept in zip(self.criteria, stored, strict=True)]  # fmt: skip
            return fold_criteria(judged, self.cfg)
        judged = [self._fields(next(outputs), self.cfg) for _ in prompts]
        return combine(judged, self.cfg.turn_aggregate) if is_turns else judged[0]

    def _fields(self, out: JudgeOutput, judge: JudgeConfig) -> dict[str, Any]:
        tokens, mass = self.engine.score_tokens, judge.min_score_mass
        fields = judgement_fields(out, judge.mode, tokens, mass, judge.scale)
        if out.num_prompt_tokens is not None:  # what the server counted (and billed)
            fields[NUM_PROMPT_TOKENS] = out.num_prompt_tokens
        return fields
