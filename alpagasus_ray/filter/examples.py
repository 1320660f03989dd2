"""Rows to look at, for the report: the highest- and lowest-scored rows, those closest to the
threshold, and the first few (by id) of the `suspicious` rows and of each failure reason.

They are chosen from the few columns the report reads anyway (plus `id`); then only the
chosen rows are read again, with their text, cut to `TEXT_CHARS` characters in Arrow, so a
million-row output brings a few dozen shortened rows to the driver, not every row's text.
Copies (`duplicate_of` set) are never shown: their original, which is, stands for them.
"""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from alpagasus_ray.data.io import output_dataset
from alpagasus_ray.data.schema import (
    DECISION,
    DUPLICATE_OF,
    ID,
    REASON,
    REASON_DETAIL,
    SCORE,
    SUSPICIOUS,
    TRIPLE,
)

TEXT_CHARS = 200
_SHORTENED = (*TRIPLE, REASON_DETAIL)
_SHOWN = (ID, DECISION, SCORE, REASON, *_SHORTENED)
_TITLES = {
    "highest": "Highest scores",
    "lowest": "Lowest scores",
    "closest": "Closest to the threshold",
    "suspicious": "Suspicious (the text addresses the judge)",
}


def _first(table: pa.Table, n: int, keys: list[tuple[str, str]]) -> list[str]:
    return table.take(pc.sort_indices(table, sort_keys=keys)[:n]).column(ID).to_pylist()


def choose(table: pa.Table, threshold: float, n: int) -> dict[str, Any]:
    """Ids of each kind of example, in order; `reasons` maps each reason to its ids."""
    if DUPLICATE_OF in table.column_names:
        table = table.filter(pc.is_null(table.column(DUPLICATE_OF)))
    table = table.filter(pc.is_valid(table.column(ID)))
    scored = table.filter(pc.is_valid(table.column(SCORE)))
    scored = scored.append_column("_gap", pc.abs(pc.subtract(scored.column(SCORE), threshold)))
    by_id = [(ID, "ascending")]
    chosen: dict[str, Any] = {
        "highest": _first(scored, n, [(SCORE, "descending"), *by_id]),
        "lowest": _first(scored, n, [(SCORE, "ascending"), *by_id]),
        "closest": _first(scored, n, [("_gap", "ascending"), (SCORE, "ascending"), *by_id]),
    }
    if SUSPICIOUS in table.column_names:
        flagged = table.filter(pc.fill_null(table.column(SUSPICIOUS), False))
        chosen["suspicious"] = _first(flagged, n, by_id)
    reason = table.column(REASON).cast(pa.string())
    named = sorted(r for r in pc.unique(reason).to_pylist() if r)
    chosen["reasons"] = {r: _first(table.filter(pc.equal(reason, r)), n, by_id) for r in named}
    return chosen


def _shorten(text: Any) -> Any:
    if not isinstance(text, str) or len(text) <= TEXT_CHARS:
        return text
    return text[: TEXT_CHARS - 1] + "…"


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    score = None if row.get(SCORE) is None else round(row[SCORE], 3)
    shown = {ID: row[ID], DECISION: row.get(DECISION), SCORE: score}
    shown |= {c: _shorten(row[c]) for c in (REASON, REASON_DETAIL) if row.get(c)}
    return shown | {c: _shorten(row.get(c)) for c in TRIPLE}


def examples(
    fs: fsspec.AbstractFileSystem,
    root: str,
    files: list[str],
    table: pa.Table,
    threshold: float,
    n: int,
) -> dict[str, Any]:
    """The examples of `choose`, each with its decision, score, reason and shortened text."""
    chosen = choose(table, threshold, n)
    ids = {i for kind, got in chosen.items() if kind != "reasons" for i in got}
    ids |= {i for got in chosen["reasons"].values() for i in got}
    found: dict[str, dict[str, Any]] = {}
    if ids:
        dataset = output_dataset(fs, root, files)
        names = dataset.schema.names
        where = pc.field(ID).isin(sorted(ids))
        if DUPLICATE_OF in names:
            where = where & pc.field(DUPLICATE_OF).is_null()
        rows = dataset.to_table(columns=[c for c in _SHOWN if c in names], filter=where)
        for c in _SHORTENED:
            if c in rows.column_names:  # cut before Python sees it: a huge row stays cheap
                cut = pc.utf8_slice_codeunits(rows.column(c), 0, TEXT_CHARS + 1)
                rows = rows.set_column(rows.schema.get_field_index(c), c, cut)
        for row in rows.to_pylist():
            found.setdefault(row[ID], _shown(row))
    pick = lambda got: [found[i] for i in got if i in found]  # noqa: E731
    out = {kind: pick(got) for kind, got in chosen.items() if kind != "reasons"}
    return out | {"reasons": {r: pick(got) for r, got in chosen["reasons"].items()}}


def _md(text: Any) -> str:
    """One line of Markdown showing `text` as it is: newlines as ↵, markup escaped."""
    text = " ↵ ".join(str(text).splitlines())
    return "".join("\\" + ch if ch in "\\`*_{}[]<>#|" else ch for ch in text)


def _item(row: dict[str, Any]) -> list[str]:
    score = "no score" if row.get(SCORE) is None else f"score {row[SCORE]:.3f}"
    head = f"- **{_md(row[ID])}**: {row.get(DECISION)}, {score}"
    if row.get(REASON):
        head += f", {_md(row[REASON])}" + (
            f" ({_md(row[REASON_DETAIL])})" if row.get(REASON_DETAIL) else ""
        )
    return [head] + [f"  - {c}: {_md(row[c])}" for c in TRIPLE if row.get(c)]


def render(examples: dict[str, Any], threshold: float) -> list[str]:
    """The report.md section "Rows to look at", as lines."""
    groups = [(_TITLES[k], rows) for k, rows in examples.items() if k in _TITLES]
    groups += [(f"Reason `{r}`", rows) for r, rows in examples.get("reasons", {}).items()]
    lines = ["## Rows to look at", ""]
    for title, rows in groups:
        if not rows:
            continue
        if title == _TITLES["closest"]:
            title += f" ({threshold:g})"
        lines += [f"{title}:", ""] + [line for row in rows for line in _item(row)] + [""]
    return lines
