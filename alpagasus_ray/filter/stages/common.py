"""Small Arrow helpers shared by the stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.core.criteria import criterion_columns
from alpagasus_ray.data.schema import (
    DECISION,
    JUDGE_TEXT,
    PROMPT_REQUEST,
    PROMPT_TOKEN_IDS,
    SCORE,
    SCORE_PROBS,
    TURN_PROMPT_IDS,
    TURN_REQUESTS,
    column_type,
)


def with_columns(
    table: pa.Table,
    columns: dict[str, list[Any]],
    types: Mapping[str, pa.DataType] | None = None,
) -> pa.Table:
    """Replace or append columns, typed by the schema where the column is ours, or by
    `types` (a run's criteria columns)."""
    for name, values in columns.items():
        typ = (types or {}).get(name) or column_type(name)
        arr = pa.array(values, type=typ) if typ is not None else pa.array(values)
        idx = table.schema.get_field_index(name)
        table = table.set_column(idx, name, arr) if idx >= 0 else table.append_column(name, arr)
    return table


def pending_rows(table: pa.Table) -> list[int]:
    """Rows no earlier stage has decided (quarantined or failed) yet."""
    if DECISION not in table.column_names:
        return list(range(table.num_rows))
    mask = pc.is_null(table.column(DECISION)).to_pylist()
    return [i for i, m in enumerate(mask) if m]


def column_or_nulls(table: pa.Table, name: str) -> list[Any]:
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [None] * table.num_rows


def row_prompts(table: pa.Table, rows: list[int]) -> tuple[list[list], list[list], list[bool]]:
    """The prompts (token ids) and requests (an API judge's) of each of `rows`: one each,
    or one per judged turn of a conversation under `judge.turns: each` (the third list says
    which rows those are); None where the prompt stage made none of that kind."""
    single = column_or_nulls(table, PROMPT_TOKEN_IDS)
    single_requests = column_or_nulls(table, PROMPT_REQUEST)
    turns = column_or_nulls(table, TURN_PROMPT_IDS)
    turn_requests = column_or_nulls(table, TURN_REQUESTS)
    prompts, requests, turned = [], [], []
    for i in rows:
        turned.append(turns[i] is not None or turn_requests[i] is not None)
        if not turned[-1]:
            prompts.append([single[i]])
            requests.append([single_requests[i]])
            continue
        k = len(turns[i] if turns[i] is not None else turn_requests[i])
        prompts.append(turns[i] if turns[i] is not None else [None] * k)
        requests.append(turn_requests[i] if turn_requests[i] is not None else [None] * k)
    return prompts, requests, turned


def stored_judgements(table: pa.Table, judge: JudgeConfig) -> dict[str, list[dict | None]]:
    """Per criterion (`judge.criteria`), each row's judgement kept from an earlier attempt
    (`KnownScoresStage`), or None where the criterion is still to be judged: what a retry
    does not pay for again."""
    detail = SCORE_PROBS if judge.mode == "logprobs" else JUDGE_TEXT
    out: dict[str, list[dict | None]] = {}
    for name in judge.criteria:
        score_name, detail_name = criterion_columns(name, judge.mode)
        pairs = zip(column_or_nulls(table, score_name), column_or_nulls(table, detail_name),
                    strict=True)  # fmt: skip
        out[name] = [None if s is None else {SCORE: s, detail: d} for s, d in pairs]
    return out
