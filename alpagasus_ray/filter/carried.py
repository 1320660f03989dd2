"""The types of the user's own columns in record input (JSON, JSON lines, CSV, TSV), so that
they come back as they were read: strings as strings, numbers as numbers, lists as lists.

Blocks are validated apart and Ray joins the blocks it batches together, so a column must
have one type in every block, whatever values a block happens to hold. One light pass over
the input before judging (`carried_kinds`: each block's JSON kinds per key, merged on the
driver) fixes each column's type; only a column whose values really differ in kind (a string
here, a number there), or that holds objects (a struct would add keys a row did not have),
is carried as JSON text, and the manifest names each such column (`json_text_columns`)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import ColumnMap, InputConfig, StorageConfig
from alpagasus_ray.data.listing import Listing
from alpagasus_ray.data.schema import OWN_COLUMNS, RAW_JSON, READ_ERROR, read_column

_SCALARS = {"str": pa.string(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64()}
_INT64 = range(-(2**63), 2**63)
SMALL_INPUT_BYTES = 16 << 20  # record input up to this size is scanned in the driver


def carried_name(name: str, own: Collection[str] = ()) -> str:
    """An input column that collides with one we write (`own`: a run's criteria columns
    besides the fixed ones) is kept under a prefixed name."""
    return f"orig_{name}" if name in OWN_COLUMNS or name in own else name


def kind_of(value: Any) -> str:
    """A JSON value's kind: null, str, bool, int, float, list:<item kind>, object, or
    `mixed` (a list of several kinds, an int beyond int64)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if value in _INT64 else "mixed"
    if isinstance(value, (float, str)):
        return type(value).__name__
    if isinstance(value, list):
        items = {kind_of(v) for v in value} - {"null"}
        return f"list:{merged(items)}"
    return "object"


def merged(kinds: set[str]) -> str:
    """The one kind a column of values of these kinds has (`mixed` when none): numbers of
    both kinds are floats; an empty or null-only set is null."""
    kinds = kinds - {"null"}
    if kinds == {"int", "float"}:
        return "float"
    lists = {k for k in kinds if k.startswith("list:")}
    if lists and lists == kinds:
        items = {k.removeprefix("list:") for k in lists} - {"null"}
        return f"list:{merged(items)}"
    return kinds.pop() if len(kinds) == 1 else "null" if not kinds else "mixed"


def arrow_type(kind: str) -> pa.DataType | None:
    """The Arrow type of a merged kind; None for JSON text (objects, mixed kinds)."""
    if kind == "null":
        return pa.string()  # nulls only: a string column of nulls, as a Parquet input's
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind.startswith("list:"):
        item = arrow_type(kind.removeprefix("list:"))
        return None if item is None or kind.count("list:") > 1 else pa.list_(item)
    return None


class KindsStage:
    """One block of raw records -> one row: the kinds of each key not in `consumed`, as
    JSON. A record that does not parse is left to validation (it quarantines it)."""

    def __init__(self, consumed: frozenset[str]):
        self.consumed = consumed

    def __call__(self, table: pa.Table) -> pa.Table:
        errors = read_column(table, READ_ERROR)
        pairs = zip(table.column(RAW_JSON).to_pylist(), errors, strict=True)
        kinds = kinds_of_records(pairs, self.consumed)
        return pa.table({"kinds": [json.dumps({k: sorted(v) for k, v in kinds.items()})]})


def kinds_of_records(
    records: Iterable[tuple[str, str | None]],
    consumed: frozenset[str],
    kinds: dict[str, set[str]] | None = None,
) -> dict[str, set[str]]:
    """The kinds of each key not in `consumed` over (record text, read error) pairs, added
    to `kinds`. A record that does not parse is left to validation (it quarantines it)."""
    kinds = {} if kinds is None else kinds
    for raw, error in records:
        try:
            record = None if error else json.loads(raw)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(record, dict):
            for key, value in record.items():
                if key not in consumed:
                    kinds.setdefault(key, set()).add(kind_of(value))
    return kinds


def carried_kinds(ds: Any, consumed: frozenset[str], num_cpus: float) -> dict[str, str]:
    """Each extra key of the record dataset `ds` (raw records) -> its merged kind, from one
    pass over it, in order of the keys' first appearance."""
    seen: dict[str, set[str]] = {}
    blocks = ds.map_batches(KindsStage(consumed), batch_format="pyarrow", num_cpus=num_cpus)
    for row in blocks.iter_rows():
        for key, kinds in json.loads(row["kinds"]).items():
            seen.setdefault(key, set()).update(kinds)
    return {key: merged(kinds) for key, kinds in seen.items()}


def carried_array(values: list[Any], key: str, kinds: Mapping[str, str] | None) -> pa.Array:
    """A carried column of record input: its values in the type of the kind the pass found,
    or as JSON text (objects, mixed kinds, a key the pass did not see, or no pass: `kinds`
    None)."""
    arrow = None if kinds is None else arrow_type(kinds.get(key, "mixed"))
    if arrow is None:
        texts = [None if v is None else json.dumps(v, ensure_ascii=False) for v in values]
        return pa.array(texts, pa.string())
    return pa.array(values, type=arrow)


def scan_kinds(
    cfg: InputConfig, storage: StorageConfig, listing: Listing, num_cpus: float, rows: int
) -> dict[str, str] | None:
    """The kinds of a record input's extra keys (`carried_kinds`, blocks of `rows`), or None:
    columnar input keeps its Arrow types, and a read cut by `input.limit` may take other rows
    in another pass, so its extra keys are carried as JSON text."""
    if cfg.limit or any(f.columnar for f in listing.formats.values()):
        return None
    keys = consumed(cfg.columns)
    if sum(listing.fs.size(path) for path in listing.files) <= SMALL_INPUT_BYTES:
        return scanned_here(listing, keys)
    from alpagasus_ray.data.read import read_input

    ds = read_input(cfg, storage, num_cpus, rows, None, listing)
    return carried_kinds(ds, keys, num_cpus)


def scanned_here(listing: Listing, consumed: frozenset[str]) -> dict[str, str]:
    """`carried_kinds` of a small input, read in this process: a Ray pass would cost more
    than the reading. A file that cannot be read is left to the job's read, which fails or
    skips it (the kinds of the records before the error count, as their rows will)."""
    from alpagasus_ray.data.records import open_text, records

    seen: dict[str, set[str]] = {}
    for path in listing.files:
        fmt = listing.formats[path]
        try:
            with open_text(listing.fs, path, fmt) as text:
                kinds_of_records(records(text, fmt.kind), consumed, seen)
        except Exception:  # noqa: BLE001, S112 - the job's own read says why
            continue
    return {key: merged(kinds) for key, kinds in seen.items()}


def consumed(columns: ColumnMap) -> frozenset[str]:
    """The input keys that become the canonical triple; every other key is carried (a
    conversation too: the triple is drawn from it, and it stays as read)."""
    if columns.messages:
        return frozenset()
    return frozenset(c for c in (columns.instruction, columns.input, columns.output) if c)


def json_text_columns(
    extras: list[str], listing: Listing, kinds: Mapping[str, str] | None, conflicting: list[str]
) -> list[str]:
    """Which of an output's carried columns (`extras`, by output name) hold JSON text: a
    columnar input's whose types conflict across its files; a record input's of mixed kinds
    or objects, or all of them when there was no pass (`kinds` None)."""
    if any(f.columnar for f in listing.formats.values()):
        return [carried_name(name) for name in conflicting]
    by_name = {carried_name(key): kind for key, kind in (kinds or {}).items()}
    return [n for n in extras if kinds is None or arrow_type(by_name.get(n, "mixed")) is None]


def extra_names(schema: pa.Schema) -> list[str]:
    """The user's own columns: everything the filter did not add."""
    return [n for n in schema.names if n not in OWN_COLUMNS]


def output_json_text(
    fs: Any, root: str, files: list[str], listing: Listing, kinds: Mapping[str, str] | None
) -> list[str]:
    """The carried columns of an output's data `files` that hold JSON text, for its manifest
    (`json_text_columns`; one footer read per file)."""
    from alpagasus_ray.data.io import output_dataset
    from alpagasus_ray.filter.preflight import conflicting_columns

    if not files:
        return []
    schema = output_dataset(fs, root, files, every_column=True).schema
    return json_text_columns(extra_names(schema), listing, kinds, conflicting_columns(listing))
