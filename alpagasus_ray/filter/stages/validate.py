"""Validate rows: map columns to the canonical triple, give each row a stable id, and
quarantine (never drop) every row that cannot be judged, with a machine-readable reason."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import ColumnMap
from alpagasus_ray.data.records import lone_surrogate
from alpagasus_ray.data.schema import (
    DECISION,
    ID,
    INPUT,
    INSTRUCTION,
    OUTPUT,
    RAW_JSON,
    READ_ERROR,
    READ_ROW,
    READ_SOURCE,
    REASON,
    REASON_DETAIL,
    SOURCE,
    SOURCE_ROW,
    SUSPICIOUS,
    TURNS,
    Decision,
    Reason,
    conform,
    read_column,
    rows_to_table,
)
from alpagasus_ray.filter.carried import carried_array, carried_name, consumed
from alpagasus_ray.filter.conversations import conversation_fields
from alpagasus_ray.filter.suspicious import addresses_judge

_MISSING = object()
_OWN_HEAD = [ID, INSTRUCTION, INPUT, OUTPUT, SOURCE, SOURCE_ROW]
_OWN_TAIL = [SUSPICIOUS, DECISION, REASON, REASON_DETAIL, TURNS]


def content_id(*parts: Any) -> str:
    """Stable across runs, machines and shard layouts: a hash of the content alone."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def json_text(value: Any) -> str | None:
    """A carried value as JSON text, null kept null: one string column whatever the value's
    JSON shape, so blocks validated apart always agree on the column's type."""
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def quarantined(reason: Reason, detail: str, raw: str, source: str | None) -> dict[str, Any]:
    """A record that could not even be parsed: quarantined with its raw text's hash as id."""
    return {
        ID: content_id("quarantined", raw),
        SOURCE: source,
        DECISION: Decision.QUARANTINED.value,
        REASON: reason.value,
        REASON_DETAIL: detail,
    }


class ValidateStage:
    """Blocks are validated apart, so a carried column's type cannot depend on the values a
    block happens to hold: record input carries each non-canonical key in the type of the
    kind `carried_kinds` found for it over the whole input (`filter/carried.py`), as JSON
    text when that is mixed or when there was no such pass; columnar input keeps its Arrow
    columns, except `json_columns`, whose types differ across the input's files
    (`preflight.conflicting_columns`), also as JSON text."""

    def __init__(
        self,
        columns: ColumnMap,
        json_columns: Collection[str] = (),
        carried_kinds: Mapping[str, str] | None = None,
        own: Collection[str] = (),
    ):
        """`own`: the columns a run writes besides the fixed ones (its criteria's)."""
        self.columns = columns
        self.own = frozenset(own)
        self.json_columns = frozenset(json_columns)
        self.carried_kinds = carried_kinds
        self.mapped = {INSTRUCTION: columns.instruction, OUTPUT: columns.output}
        if columns.input:
            self.mapped[INPUT] = columns.input
        # Mapped columns become the canonical ones; the id column is also carried as it is.
        self.consumed = consumed(columns)

    def __call__(self, table: pa.Table) -> pa.Table:
        if RAW_JSON in table.column_names:
            return self._validate_json(table)
        return self._validate_columns(table)

    def _validate_json(self, table: pa.Table) -> pa.Table:
        """Record input: every record is parsed here, so a broken line is one quarantined row,
        and so is one the reader could not trust (`_read_error`) or whose text is not valid
        Unicode (a `\\ud800` escape): it could be stored neither as read nor changed."""
        rows: list[dict[str, Any]] = []
        extras: dict[str, str] = {}  # output name -> input key
        positions = zip(read_column(table, READ_SOURCE), read_column(table, READ_ROW), strict=True)
        records = zip(
            table.column(RAW_JSON).to_pylist(), read_column(table, READ_ERROR), strict=True
        )
        for (raw, read_error), (source, position) in zip(records, positions, strict=True):
            try:
                record = None if read_error else json.loads(raw)
                read_error = read_error or lone_surrogate(raw, record)
            except (json.JSONDecodeError, TypeError) as e:
                row = quarantined(Reason.MALFORMED_JSON, f"{e}: {raw[:500]}", raw, source)
                rows.append({**row, SOURCE_ROW: position})
                continue
            if read_error:
                reason, detail = read_error.split(": ", 1)
                detail = f"{detail}; the record as read: {raw}"
                row = quarantined(Reason(reason), detail, raw, source)
                rows.append({**row, SOURCE_ROW: position})
                continue
            if not isinstance(record, dict):
                detail = f"record is a JSON {type(record).__name__}, not an object"
                row = quarantined(Reason.NOT_AN_OBJECT, detail, raw, source)
                rows.append({**row, SOURCE_ROW: position})
                continue
            row = self.validate(record)
            row[SOURCE], row[SOURCE_ROW] = source, position
            for key in record:
                if key in self.consumed:
                    continue
                name = carried_name(key, self.own)
                if name not in row:
                    row[name] = record[key]
                    extras.setdefault(name, key)
            rows.append(row)
        table = rows_to_table(rows, _OWN_HEAD + _OWN_TAIL)
        for i, (name, key) in enumerate(extras.items()):
            values = carried_array([r.get(name) for r in rows], key, self.carried_kinds)
            table = table.add_column(len(_OWN_HEAD) + i, name, values)
        return conform(table)

    def _validate_columns(self, table: pa.Table) -> pa.Table:
        """Parquet input: only the mapped columns are read; the rest pass through as Arrow."""
        present = {src: table.column(src).to_pylist() for src in self._sources(table)}
        rows = []
        for i in range(table.num_rows):
            record = {src: values[i] for src, values in present.items()}
            rows.append(self.validate(record))
        own = rows_to_table(rows, [ID, INSTRUCTION, INPUT, OUTPUT, *_OWN_TAIL])
        out = {name: own.column(name) for name in (ID, INSTRUCTION, INPUT, OUTPUT)}
        out[SOURCE] = pa.array(read_column(table, READ_SOURCE), pa.string())
        out[SOURCE_ROW] = pa.array(read_column(table, READ_ROW), pa.int64())
        for name in table.column_names:
            if name in self.consumed or name in (READ_SOURCE, READ_ROW):
                continue
            column = table.column(name)
            if name in self.json_columns:
                column = pa.array([json_text(v) for v in column.to_pylist()], pa.string())
            out[carried_name(name, self.own)] = column
        for name in _OWN_TAIL:
            out[name] = own.column(name)
        return conform(pa.table(out))

    def _sources(self, table: pa.Table) -> list[str]:
        read = [self.columns.messages] if self.columns.messages else [*self.mapped.values()]
        names = read + ([self.columns.id] if self.columns.id else [])
        return [n for n in names if n in table.column_names]

    def validate(self, record: dict[str, Any]) -> dict[str, Any]:
        """Canonical fields and id of one record; a quarantine reason on the first problem."""
        row, problem = self._fields(record)
        if self.columns.id:
            rid = record.get(self.columns.id, _MISSING)
            if rid is _MISSING or rid is None:
                problem = problem or (Reason.MISSING_FIELD, f"id column {self.columns.id!r}")
                rid = None
            row[ID] = None if rid is None else str(rid)
        if row.get(ID) is None:
            row[ID] = content_id(
                *(row[c] for c in (INSTRUCTION, INPUT, OUTPUT))
                if problem is None
                else ("quarantined", record)
            )
        row[SUSPICIOUS] = addresses_judge(*(row[c] for c in (INSTRUCTION, INPUT, OUTPUT)))
        if problem:
            reason, detail = problem
            row.update({DECISION: Decision.QUARANTINED.value, REASON: reason.value})
            row[REASON_DETAIL] = detail
        return row

    def _fields(self, record: dict[str, Any]) -> tuple[dict[str, Any], tuple[Reason, str] | None]:
        """The triple of one record, from its mapped columns or its conversation, and the
        first problem found."""
        if self.columns.messages:
            value = record.get(self.columns.messages, _MISSING)
            if value is _MISSING or value is None:
                what = "missing" if value is _MISSING else "null"
                label = f"conversation (column {self.columns.messages!r})"
                reason = Reason.MISSING_FIELD if value is _MISSING else Reason.NULL_FIELD
                return {INSTRUCTION: None, INPUT: "", OUTPUT: None}, (reason, f"{label} is {what}")
            return conversation_fields(value)
        row: dict[str, Any] = {}
        problem: tuple[Reason, str] | None = None
        for canon in (INSTRUCTION, INPUT, OUTPUT):
            src = self.mapped.get(canon)
            value = record.get(src, _MISSING) if src else ""
            if canon == INPUT and (value is _MISSING or value is None):
                value = ""  # Alpaca-style data may omit an empty input, or null it.
            row[canon] = value if isinstance(value, str) else None
            if problem is None:
                problem = self._check(canon, src, value)
        return row, problem

    @staticmethod
    def _check(canon: str, src: str | None, value: Any) -> tuple[Reason, str] | None:
        label = canon if src == canon else f"{canon} (column {src!r})"
        if value is _MISSING:
            return Reason.MISSING_FIELD, f"{label} is missing"
        if value is None:
            return Reason.NULL_FIELD, f"{label} is null"
        if not isinstance(value, str):
            return Reason.NON_STRING_FIELD, f"{label} is a {type(value).__name__}, not a string"
        if canon != INPUT and not value.strip():
            return Reason.EMPTY_FIELD, f"{label} is empty"
        return None
