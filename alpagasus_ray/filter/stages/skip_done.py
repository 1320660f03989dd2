"""Drop the rows a resumed run has in its output already, right after the read."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from alpagasus_ray.data.schema import READ_ROW, READ_SOURCE

_DONE: dict[str, frozenset[str]] = {}  # per worker process: the set is built once


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
