"""Keep or reject each scored row by threshold, and give the batch its final schema."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.core.criteria import Rule
from alpagasus_ray.data.schema import (
    DECISION,
    REASON,
    REASON_DETAIL,
    SCORE,
    SOURCE,
    SOURCE_ROW,
    Decision,
    conform,
)
from alpagasus_ray.filter.criteria import criteria_types, kept_mask
from alpagasus_ray.filter.progress import batch_key
from alpagasus_ray.filter.stages.common import column_or_nulls, with_columns


class DecideStage:
    """`progress` (a `filter.progress.ProgressCounter`) hears of every batch decided. With
    `judge.criteria` (`judge`), `rule` decides on the criteria's scores, each against its
    threshold (its own or `threshold`), or on the row's mean score against `threshold`."""

    def __init__(
        self,
        threshold: float,
        progress: Any = None,
        judge: JudgeConfig | None = None,
        rule: Rule = "all",
    ):
        self.threshold = threshold
        self.progress = progress
        self.judge, self.rule = judge, rule
        self.types = criteria_types(judge) if judge is not None else {}

    def __call__(self, table: pa.Table) -> pa.Table:
        # A batch no criterion judged (all quarantined) has their columns too, as nulls.
        n, names = table.num_rows, (SCORE, *self.types)
        missing = {c: [None] * n for c in names if c not in table.column_names}
        table = with_columns(table, missing, self.types)
        decision = column_or_nulls(table, DECISION)
        reason = column_or_nulls(table, REASON)
        detail = column_or_nulls(table, REASON_DETAIL)
        kept = kept_mask(table, self.threshold, self.judge, self.rule).to_pylist()
        for i, keep in enumerate(kept):
            if decision[i] is not None:
                continue
            if keep is None:  # not reachable through the engines; never a silent drop
                decision[i] = Decision.FAILED.value
                reason[i], detail[i] = "not_scored", "no stage produced a score"
            else:
                decision[i] = (Decision.KEPT if keep else Decision.REJECTED).value
        table = with_columns(table, {DECISION: decision, REASON: reason, REASON_DETAIL: detail})
        if self.progress is not None:
            key = batch_key(column_or_nulls(table, SOURCE), column_or_nulls(table, SOURCE_ROW))
            self.progress.add.remote(len(decision), decision.count(Decision.KEPT.value), key)
        return conform(table, drop_internal=True)
