"""Keep or reject each scored row by threshold, and give the batch its final schema."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

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
from alpagasus_ray.filter.progress import batch_key
from alpagasus_ray.filter.stages.common import column_or_nulls, with_columns


def decide(score: float | None, threshold: float) -> Decision:
    """The one place a score becomes a decision: keep when score >= threshold."""
    if score is None:
        return Decision.FAILED
    return Decision.KEPT if score >= threshold else Decision.REJECTED


class DecideStage:
    """`progress` (a `filter.progress.ProgressCounter`) hears of every batch decided."""

    def __init__(self, threshold: float, progress: Any = None):
        self.threshold = threshold
        self.progress = progress

    def __call__(self, table: pa.Table) -> pa.Table:
        decision = column_or_nulls(table, DECISION)
        reason = column_or_nulls(table, REASON)
        detail = column_or_nulls(table, REASON_DETAIL)
        for i, score in enumerate(column_or_nulls(table, SCORE)):
            if decision[i] is None:
                decision[i] = decide(score, self.threshold).value
                if score is None:  # not reachable through the engines; never a silent drop
                    reason[i], detail[i] = "not_scored", "no stage produced a score"
        table = with_columns(table, {DECISION: decision, REASON: reason, REASON_DETAIL: detail})
        if self.progress is not None:
            key = batch_key(column_or_nulls(table, SOURCE), column_or_nulls(table, SOURCE_ROW))
            self.progress.add.remote(len(decision), decision.count(Decision.KEPT.value), key)
        return conform(table, drop_internal=True)
