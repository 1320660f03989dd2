"""The dedup stage: the first row with a content is judged, its copies set aside
(`filter/duplicates.py` has the rule and settles the copies once every row is written)."""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from alpagasus_ray.data.schema import (
    CONTENT_HASH,
    DECISION,
    DUPLICATE_OF,
    INPUT,
    INSTRUCTION,
    OUTPUT,
    SOURCE,
    SOURCE_ROW,
)
from alpagasus_ray.filter.stages.common import column_or_nulls, pending_rows, with_columns

DUPLICATE = "duplicate"  # a copy's decision until it is settled at the end of the run


def content_hash(instruction: str | None, input: str | None, output: str | None) -> str:
    """Equal for rows a judge cannot tell apart: the same three texts ("" = no input)."""
    blob = "\x1e".join(x or "" for x in (instruction, input, output))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def position(source: str, row: int) -> str:
    return f"{source}:{row}"


class DedupStage:
    """Marks the copies of a batch (decision `duplicate`, `duplicate_of`) and gives every
    row still to judge its `content_hash`; rows already decided (quarantined) are left as
    they are."""

    def __init__(self, seen: Any):
        self.seen = seen

    def __call__(self, table: pa.Table) -> pa.Table:
        import ray

        todo = pending_rows(table)
        texts = {c: table.column(c).to_pylist() for c in (INSTRUCTION, INPUT, OUTPUT)}
        hashes: list[str | None] = [None] * table.num_rows  # only rows that can be judged
        for i in todo:
            hashes[i] = content_hash(*(texts[c][i] for c in texts))
        sources, rows = table.column(SOURCE).to_pylist(), table.column(SOURCE_ROW).to_pylist()
        here = [position(sources[i], rows[i]) for i in todo]
        firsts = ray.get(self.seen.claim.remote([hashes[i] for i in todo], here)) if todo else []
        decision = column_or_nulls(table, DECISION)
        dup_of: list[str | None] = [None] * table.num_rows
        for i, first in zip(todo, firsts, strict=True):
            if first is not None:
                decision[i], dup_of[i] = DUPLICATE, first
        return with_columns(table, {CONTENT_HASH: hashes, DUPLICATE_OF: dup_of, DECISION: decision})
