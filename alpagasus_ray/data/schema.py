"""Column names, decisions, quarantine reasons and the typed output columns.

The output of every stage is cast to `OUTPUT_SCHEMA` for the columns we own, so every
Parquet file of every partition has the same types even when a batch is all nulls.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import pyarrow as pa

# Canonical triple.
INSTRUCTION, INPUT, OUTPUT = "instruction", "input", "output"
TRIPLE = (INSTRUCTION, INPUT, OUTPUT)

# Columns the pipeline adds.
ID = "id"
SOURCE = "source"
SOURCE_ROW = "source_row"  # the row's position in its file: what a resumed run skips by
DECISION = "decision"
SCORE = "score"
SCORE_PROBS = "score_probs"
SCORE_MASS = "score_mass"
JUDGE_TEXT = "judge_text"
REASON = "reason"
REASON_DETAIL = "reason_detail"
NUM_PROMPT_TOKENS = "num_prompt_tokens"
NUM_OUTPUT_TOKENS = "num_output_tokens"
SUSPICIOUS = "suspicious"  # the text addresses the judge (filter/suspicious.py)
CONTENT_HASH = "content_hash"  # equal for exact duplicates (filter/duplicates.py)
DUPLICATE_OF = "duplicate_of"  # a copy: `<source>:<row>` of the row judged in its place
TURN_SCORES = "turn_scores"  # judge.turns: each: each judged assistant turn's score

# Internal columns, dropped before writing. The readers add READ_SOURCE and READ_ROW, which
# validation turns into SOURCE and SOURCE_ROW.
RAW_JSON = "_json"
READ_ERROR = "_read_error"  # why a record file's record cannot be trusted (data/records.py)
READ_SOURCE = "_source"
READ_ROW = "_row"
PROMPT_TOKEN_IDS = "_prompt_token_ids"
PROMPT_REQUEST = "_prompt_request"  # an API judge's request: JSON chat messages or prompt text
TURNS = "_turns"  # a conversation row's turns as role/content JSON (filter/conversations.py)
TURN_PROMPT_IDS = "_turn_prompt_ids"  # judge.turns: each: one prompt per judged turn
TURN_REQUESTS = "_turn_requests"
TURN_OF = "_turn_of"  # vLLM's turn rows: "<conversation key> <turn> <turns>" (turn_index)
INTERNAL = (RAW_JSON, READ_ERROR, READ_SOURCE, READ_ROW, PROMPT_TOKEN_IDS, PROMPT_REQUEST,
            TURNS, TURN_PROMPT_IDS, TURN_REQUESTS, TURN_OF)  # fmt: skip


class Decision(str, Enum):
    KEPT = "kept"
    REJECTED = "rejected"
    QUARANTINED = "quarantined"
    FAILED = "failed"


DECISIONS = tuple(d.value for d in Decision)


class Reason(str, Enum):
    """Machine-readable reasons for quarantined and failed rows."""

    MALFORMED_JSON = "malformed_json"
    MALFORMED_CSV = "malformed_csv"  # a row whose cells do not match its header
    INVALID_TEXT = "invalid_text"  # bytes that are not UTF-8, or a lone surrogate
    DUPLICATE_ID = "duplicate_id"  # input.columns.id repeats (filter/repeated_ids.py)
    NO_ASSISTANT_TURN = "no_assistant_turn"  # a conversation (filter/conversations.py)
    UNKNOWN_ROLE = "unknown_role"
    INVALID_TURN = "invalid_turn"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    NULL_FIELD = "null_field"
    NON_STRING_FIELD = "non_string_field"
    EMPTY_FIELD = "empty_field"
    PROMPT_TOO_LONG = "prompt_too_long"
    UNPARSEABLE_JUDGEMENT = "unparseable_judgement"
    LOW_SCORE_MASS = "low_score_mass"
    ENGINE_ERROR = "engine_error"


OUTPUT_SCHEMA = pa.schema(
    [
        (ID, pa.string()),
        (INSTRUCTION, pa.string()),
        (INPUT, pa.string()),
        (OUTPUT, pa.string()),
        (SOURCE, pa.string()),
        (SOURCE_ROW, pa.int64()),
        (DECISION, pa.string()),
        (SCORE, pa.float64()),
        (SCORE_PROBS, pa.list_(pa.float32())),
        (SCORE_MASS, pa.float64()),
        (JUDGE_TEXT, pa.string()),
        (REASON, pa.string()),
        (REASON_DETAIL, pa.string()),
        (NUM_PROMPT_TOKENS, pa.int32()),
        (NUM_OUTPUT_TOKENS, pa.int32()),
        (SUSPICIOUS, pa.bool_()),
        (CONTENT_HASH, pa.string()),
        (DUPLICATE_OF, pa.string()),
        (TURN_SCORES, pa.list_(pa.float64())),
    ]
)
OWN_COLUMNS = frozenset(OUTPUT_SCHEMA.names) | frozenset(INTERNAL)

INTERNAL_TYPES = {
    RAW_JSON: pa.string(),
    READ_ERROR: pa.string(),
    READ_SOURCE: pa.string(),
    READ_ROW: pa.int64(),
    PROMPT_TOKEN_IDS: pa.list_(pa.int32()),
    PROMPT_REQUEST: pa.string(),
    TURNS: pa.string(),
    TURN_PROMPT_IDS: pa.list_(pa.list_(pa.int32())),
    TURN_REQUESTS: pa.list_(pa.string()),
    TURN_OF: pa.string(),
}


def turn_index(mark: str) -> int:
    """A `TURN_OF` mark's turn (or, with criteria, criterion) number, from 0."""
    return int(mark.split(" ")[1])


def read_column(table: pa.Table, name: str) -> list[Any]:
    """A column the readers add (`READ_SOURCE`, `READ_ROW`, `READ_ERROR`), as values; nulls
    for a table built some other way (a user's own dataset, a test's)."""
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [None] * table.num_rows


def column_type(name: str) -> pa.DataType | None:
    if name in INTERNAL_TYPES:
        return INTERNAL_TYPES[name]
    idx = OUTPUT_SCHEMA.get_field_index(name)
    return OUTPUT_SCHEMA.field(idx).type if idx >= 0 else None


def _array(name: str, values: list[Any]) -> pa.Array:
    """Typed for our columns; inferred for carried-through columns.

    A carried column whose values Arrow cannot put in one type (e.g. mixed int and str in
    JSON input) is stored as JSON text rather than failing the batch.
    """
    typ = column_type(name)
    if typ is not None:
        return pa.array(values, type=typ)
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        import json

        return pa.array(
            [v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values],
            type=pa.string(),
        )


def rows_to_table(rows: list[dict[str, Any]], columns: list[str]) -> pa.Table:
    """Build a table with the given column order; missing values are nulls."""
    return pa.table({c: _array(c, [r.get(c) for r in rows]) for c in columns})


def conform(table: pa.Table, drop_internal: bool = False) -> pa.Table:
    """Cast our columns to their declared types and add any that are missing (as nulls)."""
    n = table.num_rows
    cols: dict[str, pa.Array | pa.ChunkedArray] = {}
    for field in OUTPUT_SCHEMA:
        if field.name in table.column_names:
            cols[field.name] = table.column(field.name).cast(field.type)
        else:
            cols[field.name] = pa.nulls(n, type=field.type)
    for name in table.column_names:
        if name in cols:
            continue
        if name in INTERNAL:
            if not drop_internal:
                cols[name] = table.column(name).cast(INTERNAL_TYPES[name])
            continue
        col = table.column(name)
        if pa.types.is_null(col.type):
            # An all-null batch of a carried column would otherwise pin its type to null.
            col = col.cast(pa.string())
        cols[name] = col
    return pa.table(cols)
