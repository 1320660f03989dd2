"""A resumed run's rows: drop those its output has already, right after the read; give a
retried row the criteria (`judge.criteria`) it had judged already, right after validation."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from alpagasus_ray.data.schema import READ_ROW, READ_SOURCE, SOURCE, SOURCE_ROW
from alpagasus_ray.filter.stages.common import column_or_nulls, with_columns

_DONE: dict[str, frozenset[str]] = {}  # per worker process: the set is built once
_KNOWN: dict[str, dict[str, dict[str, Any]]] = {}  # the same: key -> kept columns


class SkipDoneStage:
    """`done` is an object ref to an Arrow array of row keys (`filter.resume.row_keys`);
    each worker process turns it into a set once, then every batch is a set lookup."""

    def __init__(self, done: Any):
        self.done = done

    def _keys(self) -> frozenset[str]:
        import ray

        ref = self.done.hex()
        if ref not in _DONE:
            _DONE[ref] = frozenset(ray.get(self.done).to_pylist())
        return _DONE[ref]

    def __call__(self, table: pa.Table) -> pa.Table:
        from alpagasus_ray.filter.resume import row_keys

        done = self._keys()
        keys = row_keys(table, READ_SOURCE, READ_ROW).to_pylist()
        return table.filter(pa.array([k not in done for k in keys], pa.bool_()))


class KnownScoresStage:
    """`known` is an object ref to a table of retried rows' keys (`filter.resume.KNOWN_KEY`)
    and the criteria columns they had (`types`); a row judged again takes the criteria it
    had judged, so that only the others are sent (`stages.common.stored_judgements`)."""

    def __init__(self, known: Any, types: dict[str, pa.DataType]):
        self.known, self.types = known, types

    def _rows(self) -> dict[str, dict[str, Any]]:
        import ray

        from alpagasus_ray.filter.resume import KNOWN_KEY

        ref = self.known.hex()
        if ref not in _KNOWN:
            rows = ray.get(self.known).to_pylist()
            _KNOWN[ref] = {r.pop(KNOWN_KEY): r for r in rows}
        return _KNOWN[ref]

    def __call__(self, table: pa.Table) -> pa.Table:
        from alpagasus_ray.filter.resume import row_keys

        known = self._rows()
        keys = row_keys(table, SOURCE, SOURCE_ROW).to_pylist()
        cols = {c: column_or_nulls(table, c) for c in self.types}
        for i, key in enumerate(keys):
            for c, value in known.get(key, {}).items():
                if c in cols:
                    cols[c][i] = value
        return with_columns(table, cols, self.types)
