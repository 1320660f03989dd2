"""A user's id column (`input.columns.id`) that repeats: the first row of each id stands, by
its place in the input (file, then row), and every later row with that id is quarantined
`duplicate_id`, naming the row that holds the id. Decided once every row is written, from the
id columns alone, so the choice is the same in every run, however the rows were split among
replicas or attempts, and a resumed run makes it again over all of its rows.

Ids are what labels (`calibrate`), a library caller and the user's own joins match rows by:
two rows under one id would make each of those answers depend on which row came first."""

from __future__ import annotations

import logging

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from alpagasus_ray.data.io import read_output_table
from alpagasus_ray.data.schema import (
    DECISION,
    ID,
    REASON,
    REASON_DETAIL,
    SOURCE,
    SOURCE_ROW,
    Decision,
    Reason,
)
from alpagasus_ray.filter.redecide import rewrite

log = logging.getLogger(__name__)


def repeats(fs: fsspec.AbstractFileSystem, root: str, files: list[str]) -> dict[str, str]:
    """`<source>:<row>` of each row that repeats an earlier row's id -> that earlier row, for
    the rows not quarantined already."""
    table = read_output_table(fs, root, files, columns=[ID, SOURCE, SOURCE_ROW, DECISION])
    counts = table.group_by(ID).aggregate([(ID, "count")])  # in Arrow: millions of rows
    repeated = counts.filter(pc.greater(counts.column(f"{ID}_count"), 1)).column(ID)
    if not len(repeated):
        return {}
    table = table.filter(pc.is_in(table.column(ID), value_set=repeated.combine_chunks()))
    table = table.sort_by([(SOURCE, "ascending"), (SOURCE_ROW, "ascending")])
    first: dict[str, str] = {}
    found: dict[str, str] = {}
    ids, decisions = table.column(ID).to_pylist(), table.column(DECISION).to_pylist()
    for rid, key, decision in zip(ids, _keys(table), decisions, strict=True):
        if rid not in first:
            first[rid] = key
        elif decision != Decision.QUARANTINED.value:
            found[key] = first[rid]
    return found


def _keys(table: pa.Table) -> list[str]:
    """Each row's place in the input, `<source>:<row>`."""
    places = zip(
        table.column(SOURCE).to_pylist(), table.column(SOURCE_ROW).to_pylist(), strict=True
    )
    return [f"{source}:{row}" for source, row in places]


def quarantine_repeated_ids(
    fs: fsspec.AbstractFileSystem, root: str, files: list[str]
) -> tuple[list[str], int]:
    """(the output's data files, rows quarantined): `files` as they are when no id repeats,
    else new files in which the repeats are quarantined `duplicate_id` (the caller retires
    the old ones once its manifest is committed)."""
    found = repeats(fs, root, files)
    if not found:
        return files, 0

    def quarantine(table: pa.Table) -> pa.Table:
        keys = _keys(table)
        hit = pa.array([k in found for k in keys])
        details = [f"its id is that of an earlier row, {found[k]}" if k in found else None
                   for k in keys]  # fmt: skip
        changes = {
            DECISION: pc.if_else(
                hit, Decision.QUARANTINED.value, table.column(DECISION).cast(pa.string())
            ),
            REASON: pc.if_else(hit, Reason.DUPLICATE_ID.value, table.column(REASON)),
            REASON_DETAIL: pc.if_else(hit, pa.array(details, pa.string()),
                                      table.column(REASON_DETAIL)),
        }  # fmt: skip
        for name, column in changes.items():
            table = table.set_column(table.column_names.index(name), name, column)
        return table

    log.warning("%d rows repeat an earlier row's id: quarantined duplicate_id", len(found))
    return rewrite(fs, root, files, quarantine), len(found)
