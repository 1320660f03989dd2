"""The filter report, computed from the written output alone (so it can be regenerated):
counts per decision, kept fraction, score quantiles, a section per criterion
(`judge.criteria`), reasons, per-category counts, rows to look at (filter/examples.py) and
the score histogram, as report.json, report.md and score_histogram.png."""

from __future__ import annotations

import io as _io
import json
import re
from collections.abc import Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from alpagasus_ray.core.criteria import score_column
from alpagasus_ray.data.io import join, output_dataset, read_output_table, write_atomic
from alpagasus_ray.data.schema import (
    DECISION,
    DECISIONS,
    DUPLICATE_OF,
    ID,
    REASON,
    SCORE,
    SUSPICIOUS,
)
from alpagasus_ray.engines.hash import STAND_IN_NOTE
from alpagasus_ray.filter import examples as _examples
from alpagasus_ray.filter.config import ReportConfig
from alpagasus_ray.filter.manifest import committed, listed_files
from alpagasus_ray.text.rubrics import PAPER_SCALE, Scale

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
REPORT_JSON, REPORT_MD, HISTOGRAM = "report.json", "report.md", "score_histogram.png"
_JUDGED = pa.array(["kept", "rejected"])


def _tally(table: pa.Table, *keys: str) -> list[dict[str, Any]]:
    """Rows per distinct value of `keys`, counted by Arrow: a million-row output costs the
    driver its few columns, not a Python object per row. Keys are compared as text."""
    for key in keys:
        idx = table.schema.get_field_index(key)
        table = table.set_column(idx, key, table.column(key).cast(pa.string()))
    return table.group_by(list(keys)).aggregate([([], "count_all")]).to_pylist()


def _category_column(table_columns: list[str], cfg: ReportConfig) -> str | None:
    if cfg.category_column:
        return cfg.category_column if cfg.category_column in table_columns else None
    return "category" if "category" in table_columns else None


def _plain(text: Any) -> str:
    """A category as its plain text: JSON input carries extra columns as JSON text (`"math"`,
    quotes and all; `validate.json_text`), Parquet input as they are (`math`)."""
    if isinstance(text, str) and text.startswith('"'):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, str):
            return value
    return str(text)


def compute_report(table: pa.Table, threshold: float, category: str | None) -> dict[str, Any]:
    counts = {r[DECISION]: r["count_all"] for r in _tally(table, DECISION)}
    total = table.num_rows
    scores = pc.drop_null(table.column(SCORE))
    quantiles = (
        dict(
            zip(
                (f"p{int(q * 100)}" for q in QUANTILES),
                pc.quantile(scores, q=list(QUANTILES)).to_pylist(),
                strict=True,
            )
        )
        if len(scores)
        else {}
    )
    report: dict[str, Any] = {
        "rows": total,
        "counts": {d: counts.get(d, 0) for d in DECISIONS},
        "kept_fraction": counts.get("kept", 0) / total if total else 0.0,
        "threshold": threshold,
        "scored": len(scores),
        "score_mean": pc.mean(scores).as_py() if len(scores) else None,
        "score_quantiles": quantiles,
        "reasons": {r[REASON]: r["count_all"] for r in _tally(table, REASON) if r[REASON]},
    }
    if DUPLICATE_OF in table.column_names:
        report["duplicates"] = pc.sum(pc.is_valid(table.column(DUPLICATE_OF))).as_py() or 0
    if SUSPICIOUS in table.column_names:
        flagged = table.filter(pc.fill_null(table.column(SUSPICIOUS), False))
        by = {r[DECISION]: r["count_all"] for r in _tally(flagged, DECISION)}
        report["suspicious"] = {"rows": flagged.num_rows, **{d: by.get(d, 0) for d in DECISIONS}}
    if category:
        per: dict[str, dict[str, int]] = {}
        for r in _tally(table, category, DECISION):
            by = per.setdefault(_plain(r[category]), {})
            by[r[DECISION]] = by.get(r[DECISION], 0) + r["count_all"]
        report["category_column"] = category
        report["per_category"] = {
            cat: {d: c.get(d, 0) for d in DECISIONS} for cat, c in sorted(per.items())
        }
    return report


def criteria_report(table: pa.Table, criteria: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per criterion (as the manifest records it): its scored rows, how many of them pass
    its threshold, and its score's quantiles, over the rows judged (kept or rejected)."""
    judged = table.filter(pc.is_in(table.column(DECISION), value_set=_JUDGED))
    out: dict[str, Any] = {}
    for name, c in criteria.items():
        scores = pc.drop_null(judged.column(score_column(name)))
        n = len(scores)
        passed = (pc.sum(pc.greater_equal(scores, c["threshold"])).as_py() or 0) if n else 0
        qs = pc.quantile(scores, q=[0.1, 0.5, 0.9]).to_pylist() if n else []
        out[name] = {**c, "scored": n, "passed": passed,
                     "mean": pc.mean(scores).as_py() if n else None,
                     "quantiles": dict(zip(("p10", "p50", "p90"), qs, strict=False))}  # fmt: skip
    return out


def render_criteria(report: dict[str, Any]) -> list[str]:
    """The report's section per criterion, and what the rule made of them."""
    criteria, rule = report["criteria"], report["judged"].get("rule", "all")
    said = {"all": "a row is kept when every criterion passes",
            "any": "a row is kept when any criterion passes",
            "mean": f"a row is kept when the mean of its scores scaled to 0-1 (`score`) is at "
                    f"least {report['threshold']:g}"}  # fmt: skip
    lines = [f"Rule `{rule}`: {said[rule]}; {report['counts']['kept']} kept.", ""]
    for name, c in criteria.items():
        lo, hi = c["scale"]
        passed = f"{c['passed']} of {c['scored']} judged rows pass"
        lines += [f"## Criterion `{name}`", "",
                  f"Rubric {c['rubric']}, scale {lo}-{hi}, threshold {c['threshold']:g} "
                  f"(`score_{name}`): {passed}."]  # fmt: skip
        if c["scored"]:
            qs = " ".join(f"{k} {v:.3f}" for k, v in c["quantiles"].items())
            lines[-1] += f" Mean {c['mean']:.3f}; {qs}."
        lines.append("")
        if text := c.get("rubric_text"):
            fence = "`" * max(3, 1 + max(map(len, re.findall("`+", text)), default=0))
            lines += [fence, text.rstrip("\n"), fence, ""]
    return lines


def histogram_png(
    scores: Sequence[float], threshold: float, bins: int, scale: Scale = PAPER_SCALE
) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    lo, hi = scale
    ax.hist(scores, bins=bins, range=(lo, hi), color="#4c72b0", edgecolor="white")
    ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel(f"judge score ({lo}-{hi})")
    ax.set_ylabel("examples")
    ax.set_title(f"Score distribution ({len(scores)} scored examples)")
    ax.legend()
    return figure_png(fig)


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes, closed (a long-lived process keeps no figures)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# AlpaGasus filter report", ""]
    if judged := report.get("judged"):
        rubric = judged.get("rubric") or judged.get("dimension")  # the key before templates
        lo, hi = judged.get("scale") or PAPER_SCALE
        lines += [
            f"Judge `{judged['model']}` ({judged['engine']} engine, {judged['mode']} mode, "
            f"{rubric}, scale {lo}-{hi}, {judged['layout']} layout) on `{judged['input']}`.",
            "",
        ]
        if text := judged.get("rubric_text"):
            source = f" (from `{judged['rubric_file']}`)" if judged.get("rubric_file") else ""
            fence = "`" * max(3, 1 + max(map(len, re.findall("`+", text)), default=0))
            lines += [f"Rubric{source}:", "", fence, text.rstrip("\n"), fence, ""]
        if judged["engine"] == "hash":
            lines += [f"**Not a rating:** {STAND_IN_NOTE}; train on none of it.", ""]
    lines += [
        f"{report['rows']} rows; threshold {report['threshold']:g}; "
        f"kept fraction {report['kept_fraction']:.1%}.",
        "",
        "| decision | rows |",
        "|---|---:|",
        *(f"| {d} | {n} |" for d, n in report["counts"].items()),
        "",
    ]
    if report["score_quantiles"]:
        qs = report["score_quantiles"]
        lines += [
            "| " + " | ".join(qs) + " | mean |",
            "|" + "---:|" * (len(qs) + 1),
            "| " + " | ".join(f"{v:.3f}" for v in qs.values()) + f" | {report['score_mean']:.3f} |",
            "",
        ]
    if "criteria" in report:
        lines += render_criteria(report)
    if report["reasons"]:
        lines += ["| reason | rows |", "|---|---:|"]
        lines += [f"| {r} | {n} |" for r, n in sorted(report["reasons"].items())] + [""]
    if dups := report.get("duplicates"):
        lines += [
            f"{dups} exact duplicates were not judged again: each took the decision of the "
            "row judged in its place (`duplicate_of`).",
            "",
        ]
    if flagged := report.get("suspicious", {}).get("rows"):
        lines += [
            f"{flagged} rows address the judge (`suspicious`: instructions to rate, score or "
            "ignore the rubric); they were judged like the rest: "
            + ", ".join(f"{report['suspicious'][d]} {d}" for d in DECISIONS)
            + ".",
            "",
        ]
    if "per_category" in report:
        lines += [
            f"| {report['category_column']} | " + " | ".join(DECISIONS) + " |",
            "|---|" + "---:|" * len(DECISIONS),
        ]
        for cat, c in report["per_category"].items():
            lines.append(f"| {cat} | " + " | ".join(str(c[d]) for d in DECISIONS) + " |")
        lines.append("")
    if skipped := report.get("skipped_files"):
        lines += [
            f"{len(skipped)} unreadable input file{'s' * (len(skipped) != 1)} skipped "
            "(`input.on_unreadable_file: skip`):",
            "",
            "| file | error | rows read before it |",
            "|---|---|---:|",
            *(f"| `{r['path']}` | {r['error']} | {r['rows']} |" for r in skipped),
            "",
        ]
    if examples := report.get("examples"):
        lines += _examples.render(examples, report["threshold"])
    lines.append(f"![score histogram]({HISTOGRAM})")
    return "\n".join(lines) + "\n"


def write_report(
    fs: fsspec.AbstractFileSystem,
    root: str,
    files: list[str],
    cfg: ReportConfig,
    threshold: float,
    judged: dict[str, Any] | None = None,
    skipped: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """report.json, report.md and the histogram of the data `files`, each written whole or
    not at all. A change of the output writes them before its commit: a process that dies
    in between leaves the old state committed with the new report, and the rerun, which
    makes the same change again, writes it again. `judged` says what judged which input (the
    manifest's `judge` section plus `input`), so a report read alone still says so."""
    schema_names = output_dataset(fs, root, files).schema.names
    category = _category_column(schema_names, cfg)
    columns = [DECISION, SCORE, REASON] + ([category] if category else [])
    columns += [c for c in (SUSPICIOUS, DUPLICATE_OF) if c in schema_names]
    columns += [ID] if cfg.examples and ID in schema_names else []
    criteria = (judged or {}).get("criteria") or {}
    columns += [score_column(name) for name in criteria]
    table = read_output_table(fs, root, files, columns=columns)
    report = compute_report(table, threshold, category)
    if criteria:
        report["criteria"] = criteria_report(table, criteria)
    if cfg.examples and ID in table.column_names:
        report["examples"] = _examples.examples(fs, root, files, table, threshold, cfg.examples)
    if judged:
        report["judged"] = judged
    if skipped:
        report["skipped_files"] = skipped
    text = json.dumps(report, indent=2, default=str) + "\n"
    write_atomic(fs, join(root, REPORT_JSON), text.encode())
    write_atomic(fs, join(root, REPORT_MD), render_markdown(report).encode())
    scores = pc.drop_null(table.column(SCORE)).to_numpy()
    scale = tuple((judged or {}).get("scale") or PAPER_SCALE)  # none recorded: the paper's
    png = histogram_png(scores, threshold, cfg.histogram_bins, scale)
    write_atomic(fs, join(root, HISTOGRAM), png)
    return report


def regenerate(uri: str, storage: Any = None) -> dict[str, Any]:
    """Rebuild the report of a finished output, with the settings recorded in its manifest."""
    from alpagasus_ray.core.config import StorageConfig
    from alpagasus_ray.data.io import filesystem

    fs, root = filesystem(uri, storage or StorageConfig())
    manifest = committed(fs, root, uri)
    cfg = ReportConfig.model_validate(manifest.config.get("report", {}))
    judged = {**manifest.judge, "input": manifest.config["input"]["uri"]}
    skipped = manifest.skipped_files
    files = listed_files(root, manifest)
    return write_report(fs, root, files, cfg, manifest.threshold, judged, skipped)
