"""`judge.turns: each` on vLLM: a conversation row becomes one engine row per judged turn
before Ray's engine stage, and its turn rows become the row again after it; with
`judge.criteria`, a row becomes one engine row per criterion the same way.

Ray's engine stage takes one prompt per row and re-batches its input, so a conversation's
turn rows can come back in different batches. `TurnGather` runs as one actor (every batch
passes through it) and holds a conversation's turn rows until the last one arrives; a row
leaves it only whole. Every turn row of the stream reaches it, so it holds nothing when the
stream ends; were a turn row ever lost (the actor killed between batches), the run's count
check finds the conversation missing and the manifest says `inconsistent`, never `complete`.
"""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.data.schema import (
    DECISION,
    JUDGE_TEXT,
    NUM_OUTPUT_TOKENS,
    PROMPT_TOKEN_IDS,
    REASON,
    REASON_DETAIL,
    SCORE,
    SCORE_MASS,
    SCORE_PROBS,
    TURN_OF,
    TURN_PROMPT_IDS,
    TURN_SCORES,
    conform,
)
from alpagasus_ray.filter.criteria import criteria_types, fold_criteria
from alpagasus_ray.filter.stages.common import column_or_nulls, stored_judgements, with_columns
from alpagasus_ray.filter.turns import combine

_JUDGED = (SCORE, SCORE_PROBS, SCORE_MASS, JUDGE_TEXT, NUM_OUTPUT_TOKENS, DECISION, REASON,
           REASON_DETAIL)  # fmt: skip


def explode_turns(table: pa.Table) -> pa.Table:
    """Each row with turn prompts as one row per turn (its prompt in `PROMPT_TOKEN_IDS`,
    `TURN_OF` = "<conversation key> <turn> <turns>"); other rows as they are."""
    turns = column_or_nulls(table, TURN_PROMPT_IDS)
    if not any(t is not None for t in turns):
        return table
    take, prompts, marks = [], [], []
    single = column_or_nulls(table, PROMPT_TOKEN_IDS)
    for i, row_turns in enumerate(turns):
        if row_turns is None:
            take.append(i), prompts.append(single[i]), marks.append(None)
            continue
        key = uuid.uuid4().hex
        for k, ids in enumerate(row_turns):
            take.append(i), prompts.append(ids), marks.append(f"{key} {k} {len(row_turns)}")
    out = table.take(pa.array(take, pa.int64()))
    return with_columns(out, {PROMPT_TOKEN_IDS: prompts, TURN_PROMPT_IDS: [None] * len(take),
                              TURN_OF: marks})  # fmt: skip


class TurnGather:
    """Turn rows back into their conversation rows (`turns.combine`), or criterion rows
    into their rows (`criteria.fold_criteria`, with `judge.criteria`); other rows pass
    through."""

    def __init__(self, how: str, judge: JudgeConfig | None = None):
        self.how = how
        self.judge = judge if judge is not None and judge.criteria else None
        self.types = criteria_types(judge) if judge is not None else {}
        self.held: dict[str, dict[int, pa.Table]] = {}

    def __call__(self, table: pa.Table) -> pa.Table:
        marks = column_or_nulls(table, TURN_OF)
        whole = [i for i, m in enumerate(marks) if m is None]
        parts = [table.take(pa.array(whole, pa.int64()))]
        for i, mark in enumerate(marks):
            if mark is None:
                continue
            key, k, n = mark.split(" ")
            turns = self.held.setdefault(key, {})
            turns[int(k)] = table.slice(i, 1)
            if len(turns) == int(n):
                parts.append(self._row([turns[j] for j in range(int(n))]))
                del self.held[key]
        out = pa.concat_tables(parts, promote_options="permissive")
        return conform(out.drop_columns([TURN_OF]) if TURN_OF in out.column_names else out)

    def _row(self, turns: list[pa.Table]) -> pa.Table:
        judged = [{c: t.column(c)[0].as_py() for c in _JUDGED if c in t.column_names}
                  for t in turns]  # fmt: skip
        if self.judge is not None:  # a criterion judged before (a retry) as it was kept
            kept = [stored_judgements(t, self.judge)[name][0]
                    for t, name in zip(turns, self.judge.criteria, strict=True)]  # fmt: skip
            judged = [k if k is not None else j for k, j in zip(kept, judged, strict=True)]
            fields = fold_criteria(judged, self.judge)
        else:
            fields = combine(judged, self.how)
        names = (*_JUDGED, TURN_SCORES, *self.types)
        cols: dict[str, list[Any]] = {c: [fields.get(c)] for c in names}
        return with_columns(turns[0], cols, self.types)
