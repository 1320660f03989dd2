"""The report's counts, from a hand-made output table (decisions as the hive partition
column reads them back: dictionary-encoded), and its rows to look at, from hand-made output
files."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alpagasus_ray.data.schema import OUTPUT_SCHEMA
from alpagasus_ray.filter.config import ReportConfig
from alpagasus_ray.filter.report import REPORT_JSON, REPORT_MD, compute_report, write_report


def test_counts_per_decision_reason_category_and_flag():
    decision = pa.array(["kept", "rejected", "kept", "quarantined", "failed", "kept"])
    table = pa.table(
        {
            "decision": decision.dictionary_encode(),
            "score": [4.8, 2.0, 4.6, None, None, 5.0],
            "reason": [None, None, None, "null_field", "engine_error", None],
            "category": ["math", "math", None, "math", "geo", "geo"],
            "suspicious": [True, None, False, True, False, True],
        }
    )
    report = compute_report(table, 4.5, "category")
    assert report["rows"] == 6 and report["scored"] == 4
    assert report["counts"] == {"kept": 3, "rejected": 1, "quarantined": 1, "failed": 1}
    assert report["kept_fraction"] == 0.5
    assert report["score_mean"] == pytest.approx((4.8 + 2.0 + 4.6 + 5.0) / 4)
    assert report["reasons"] == {"null_field": 1, "engine_error": 1}
    assert report["suspicious"] == {"rows": 3, "kept": 2, "rejected": 0, "quarantined": 1,
                                    "failed": 0}  # fmt: skip
    assert report["per_category"] == {
        "geo": {"kept": 1, "rejected": 0, "quarantined": 0, "failed": 1},
        "math": {"kept": 1, "rejected": 1, "quarantined": 1, "failed": 0},
        "None": {"kept": 1, "rejected": 0, "quarantined": 0, "failed": 0},
    }


def _output(tmp_path, rows_by_decision):
    """Hand-made output files under data/decision=.../, as the write stage lays them out."""
    cols = ["id", "instruction", "input", "output", "score", "reason", "reason_detail",
            "suspicious", "duplicate_of"]  # fmt: skip
    schema = pa.schema([OUTPUT_SCHEMA.field(c) for c in cols])
    files = []
    for decision, rows in rows_by_decision.items():
        folder = tmp_path / "data" / f"decision={decision}"
        folder.mkdir(parents=True)
        table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows], schema=schema)
        pq.write_table(table, folder / "part-0.parquet")
        files.append(str(folder / "part-0.parquet"))
    return fsspec.filesystem("file"), str(tmp_path), files


def _row(rid, score=None, **kw):
    return {"id": rid, "instruction": f"task {rid}", "input": "", "output": f"answer {rid}",
            "score": score, **kw}  # fmt: skip


@pytest.fixture
def output(tmp_path):
    kept = [_row("a", 5.0, output="x" * 1000), _row("b", 4.87549), _row("c", 4.75),
            _row("d", 4.5, instruction="a | b\nc *d*")]  # fmt: skip
    rejected = [_row("e", 4.25), _row("f", 2.0, suspicious=True), _row("g", 1.0),
                _row("h", 3.0)]  # fmt: skip
    # a copy of "b" (same content id): never shown twice
    rejected.append(_row("b", 4.87549, duplicate_of="in.json:7", suspicious=True))
    quarantined = [_row(f"q{i}", reason="null_field", reason_detail="input") for i in (4, 2, 1, 3)]
    quarantined.append(_row("q5", reason="prompt_too_long", instruction="y" * 5000))
    failed = [_row("z", reason="engine_error", reason_detail="boom", suspicious=True)]
    return _output(tmp_path, {"kept": kept, "rejected": rejected, "quarantined": quarantined,
                              "failed": failed})  # fmt: skip


def _ids(rows):
    return [r["id"] for r in rows]


def test_examples_highest_lowest_closest_suspicious_and_reasons(output):
    fs, root, files = output
    report = write_report(fs, root, files, ReportConfig(), 4.5)
    ex = json.loads((Path(root) / REPORT_JSON).read_text())["examples"]
    assert ex == report["examples"]
    assert _ids(ex["highest"]) == ["a", "b", "c"]  # the copy of "b" is not a second "b"
    assert _ids(ex["lowest"]) == ["g", "f", "h"]
    assert _ids(ex["closest"]) == ["d", "e", "c"]  # |gap| 0, then 0.25 twice: lower score first
    assert _ids(ex["suspicious"]) == ["f", "z"]
    assert {r: _ids(rows) for r, rows in ex["reasons"].items()} == {
        "engine_error": ["z"], "null_field": ["q1", "q2", "q3"], "prompt_too_long": ["q5"]
    }  # fmt: skip
    b = ex["highest"][1]
    assert b == {"id": "b", "decision": "kept", "score": 4.875, "instruction": "task b",
                 "input": "", "output": "answer b"}  # fmt: skip
    assert ex["reasons"]["engine_error"][0] | {"score": None} == {
        "id": "z", "decision": "failed", "score": None, "reason": "engine_error",
        "reason_detail": "boom", "instruction": "task z", "input": "", "output": "answer z"
    }  # fmt: skip


def test_example_texts_are_shortened(output):
    ex = write_report(*output, ReportConfig(), 4.5)["examples"]
    long_out = ex["highest"][0]["output"]
    long_instr = ex["reasons"]["prompt_too_long"][0]["instruction"]
    for text in (long_out, long_instr):
        assert len(text) == 200 and text.endswith("…")
    assert long_out == "x" * 199 + "…" and ex["highest"][0]["instruction"] == "task a"


def test_examples_in_markdown_and_off_with_zero(output):
    fs, root, files = output
    write_report(fs, root, files, ReportConfig(), 4.5)
    md = (Path(root) / REPORT_MD).read_text()
    assert "## Rows to look at" in md and "Closest to the threshold (4.5):" in md
    assert "a \\| b ↵ c \\*d\\*" in md  # one line, markup escaped
    assert "Reason `null_field`:" in md and "**q1**: quarantined, no score, null\\_field" in md
    assert "x" * 200 not in md
    report = write_report(fs, root, files, ReportConfig(examples=0), 4.5)
    assert "examples" not in report
    assert "Rows to look at" not in (Path(root) / REPORT_MD).read_text()
