"""Exact duplicates are judged once: a copy takes the judgement of the row first seen with
the same content, and points at it (`duplicate_of`).

While rows stream, `DedupStage` (`stages/dedup.py`) asks one small actor (`SeenContent`; in
the job, the run's `filter.ledger.RunLedger`) per batch which of its rows' content hashes
were seen before: the first row with a content is judged; a copy is set aside in a
`decision=duplicate` partition with the position of the row judged in its place
(`<source file>:<row>`: ids cannot point, since a content id is the same for every copy),
and no later stage touches it. Once every row is written,
`settle_duplicates` gives each copy its original's decision, score and reasons and moves it
to that decision's partition, so the output holds every row once, and rows read = kept +
rejected + quarantined + failed.

Memory: the actor keeps a 16-byte digest and the position of each distinct content, about
200 bytes a row in Python (200 MB at a million distinct rows); the settling reads the copies
and a few columns of the rows at their originals' positions, never the whole output's text.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alpagasus_ray.data.schema import (
    CONTENT_HASH,
    DECISION,
    DUPLICATE_OF,
    SOURCE,
    SOURCE_ROW,
    Decision,
)
from alpagasus_ray.filter.stages.common import column_or_nulls, with_columns
from alpagasus_ray.filter.stages.dedup import DUPLICATE, position

SETTLED_SUFFIX = "_duplicates.parquet"  # the file of the copies an attempt settled
# What a copy takes from the row judged in its place.
JUDGED_COLUMNS = (
    "decision",
    "score",
    "score_probs",
    "score_mass",
    "judge_text",
    "reason",
    "reason_detail",
)


class SeenContent:
    """The content hashes seen so far in a run, each with the position of the row judged."""

    def __init__(self, seed: dict[str, str] | None = None):
        self.first: dict[bytes, str] = {bytes.fromhex(k): v for k, v in (seed or {}).items()}

    def claim(self, hashes: list[str], positions: list[str]) -> list[str | None]:
        """Per row: None when it is the first with its content (it will be judged; a retried
        task claims again and is still the first), else the position of the first."""
        out: list[str | None] = []
        for h, pos in zip(hashes, positions, strict=True):
            first = self.first.setdefault(bytes.fromhex(h), pos)
            out.append(None if first == pos else first)
        return out


def seen_in_output(table: pa.Table | None) -> dict[str, str]:
    """A resumed run's seed: content hash -> position of each row judged (not a copy) so
    far, from the output's `content_hash`, `duplicate_of`, `source` and `source_row`."""
    if table is None or table.num_rows == 0:
        return {}
    judged = table.filter(
        pc.and_(pc.is_null(table.column(DUPLICATE_OF)), pc.is_valid(table.column(CONTENT_HASH)))
    )
    places = map(position, judged.column(SOURCE).to_pylist(), judged.column(SOURCE_ROW).to_pylist())
    return dict(zip(judged.column(CONTENT_HASH).to_pylist(), places, strict=True))


def settle_duplicates(
    fs: Any,
    root: str,
    attempt: str,
    live: list[str],
    num_cpus: float = 0.25,
    judged_too: tuple[str, ...] = (),
) -> dict[str, int]:
    """Give every copy among the run's data files `live` its original's judgement (and the
    columns `judged_too`: a run's criteria columns) and move it to that decision's
    partition; returns how many copies were settled into each decision. A Ray task does it,
    so the driver never holds the copies; run again (a task retried after a lost node), it
    writes the same files again."""
    import ray

    settle = ray.remote(num_cpus=num_cpus)(_settle)
    moved = ray.get(settle.remote(fs, root, attempt, live, (*JUDGED_COLUMNS, *judged_too)))
    fs.invalidate_cache()  # the task wrote and removed files: S3 listings cached here are stale
    return moved


def _settle(
    fs: Any, root: str, attempt: str, live: list[str], taken: tuple[str, ...]
) -> dict[str, int]:
    """Copies are never committed (a manifest lists no `duplicate` file), so their folder
    goes as soon as they are settled."""
    from alpagasus_ray.data.io import DATA_DIR, join, output_dataset

    folder = join(root, DATA_DIR, f"{DECISION}={DUPLICATE}")
    if not fs.exists(folder):
        return {}
    files = [f for f in live if f.startswith(folder + "/")]
    # Blocks differ in the extra columns their rows brought (a quarantined record's keys).
    tables = [_read(fs, f) for f in files]
    copies = pa.concat_tables(tables, promote_options="permissive") if tables else None
    if copies is None or copies.num_rows == 0:
        fs.rm(folder, recursive=True)
        return {}
    wanted = set(copies.column(DUPLICATE_OF).to_pylist())
    src, row = zip(*(w.rsplit(":", 1) for w in wanted), strict=True)
    near = pc.field(SOURCE).isin(pa.array(sorted(set(src)))) & pc.field(SOURCE_ROW).isin(
        pa.array(sorted({int(r) for r in row}), pa.int64())
    )  # a superset of the originals' positions, read without the rows' text
    originals = [f for f in live if not f.startswith(folder + "/")]
    judged = output_dataset(fs, root, originals).to_table(
        columns=[SOURCE, SOURCE_ROW, *taken],
        filter=near & (pc.field(DECISION) != DUPLICATE),
    )
    by_place = {position(r[SOURCE], r[SOURCE_ROW]): r for r in judged.to_pylist()}
    cols = {c: column_or_nulls(copies, c) for c in taken}
    for i, first in enumerate(copies.column(DUPLICATE_OF).to_pylist()):
        original = by_place.get(first)
        if original is None:  # cannot happen: the original is written before the end
            raise RuntimeError(f"row {first}, judged for its duplicates, is not in the output")
        for c in taken:
            cols[c][i] = original.get(c)
    types = {f.name: f.type for f in judged.schema}  # the criteria columns' own types
    settled = with_columns(copies, cols, types)
    moved: dict[str, int] = {}
    for d in Decision:
        part = settled.filter(pc.equal(settled.column(DECISION), d.value))
        if part.num_rows:
            moved[d.value] = part.num_rows
            path = join(root, DATA_DIR, f"{DECISION}={d.value}", f"{attempt}{SETTLED_SUFFIX}")
            with fs.open(path, "wb") as f:
                pq.write_table(part.drop_columns([DECISION]), f)
    fs.rm(folder, recursive=True)
    return moved


def _read(fs: Any, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f)
