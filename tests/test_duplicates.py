"""Exact duplicates are judged once: every copy is in the output with its original's
decision and score, points at the row judged in its place, and is counted in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from conftest import job_config
from helpers import write_jsonl

from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.duplicates import SeenContent
from alpagasus_ray.filter.estimate import estimate
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.stages.dedup import content_hash


def test_the_first_row_with_a_content_is_the_one_judged():
    seen = SeenContent()
    a, b = content_hash("x", "", "y"), content_hash("x", None, "z")
    assert content_hash("x", None, "y") == a  # no input and an empty one read the same
    assert seen.claim([a, b, a], ["f:0", "f:1", "f:2"]) == [None, None, "f:0"]
    assert seen.claim([a], ["f:0"]) == [None]  # a retried task claims again: still the first
    assert SeenContent({b: "g:7"}).claim([b], ["f:1"]) == ["g:7"]  # a resumed run's seed


def test_copies_are_judged_once_and_take_their_originals_decision(
    ray_session, stand_in, tmp_path: Path
):
    rows = synthetic_examples(40, seed=31)
    # A copy with a key of its own: its block's columns differ from the other copies'.
    copied = [rows[0], rows[3], rows[0], {**rows[3], "note": "extra"}, rows[17]]
    first = write_jsonl(tmp_path / "in" / "a.jsonl", rows + copied[:3])
    write_jsonl(tmp_path / "in" / "b.jsonl", [*copied[3:], {"instruction": "no output"}])
    distinct = len({(r["instruction"], r["input"], r["output"]) for r in rows})
    dups = 45 - distinct  # the copies above, and whatever repeats the generator made
    out = tmp_path / "out"
    cfg = job_config(str(first.parent), str(out), stand_in, judge__batch_size=8,
                     input__rows_per_block=8)  # fmt: skip
    dry = estimate(cfg)  # the dry run counts what the job then judges
    assert not out.exists()
    manifest = run_filter(cfg)
    assert manifest.status == "complete" and manifest.rows_read == 46
    assert sum(manifest.counts.values()) == 46
    assert manifest.duplicates == dups >= 5
    assert manifest.engine_metrics["examples_judged"] == distinct  # each content once
    table = pq.read_table(out / "data", partitioning="hive").to_pylist()
    assert len(table) == 46 and not (out / "data" / "decision=duplicate").exists()
    place = {f"{r['source']}:{r['source_row']}": r for r in table}
    copies = [r for r in table if r["duplicate_of"]]
    assert len(copies) == dups
    for copy in copies:
        original = place[copy["duplicate_of"]]
        assert original["duplicate_of"] is None
        assert original["content_hash"] == copy["content_hash"]
        assert (copy["instruction"], copy["output"]) == (
            original["instruction"],
            original["output"],
        )
        for col in ("decision", "score", "score_probs", "reason"):
            assert copy[col] == original[col], col
        assert copy["num_output_tokens"] is None  # not judged itself
    for r in (rows[0], rows[3], rows[17]):  # one judged row each, the first in the input
        same = [
            x for x in table if (x["instruction"], x["output"]) == (r["instruction"], r["output"])
        ]
        assert len({x["duplicate_of"] for x in same if x["duplicate_of"]}) == 1
    assert (dry["rows_read"], dry["rows_to_judge"]) == (46, distinct)
    assert (dry["duplicates"], dry["rows_quarantined"]) == (dups, 1)
    assert dry["prompt_tokens"] == sum(r["num_prompt_tokens"] or 0 for r in table) > 0
    report = json.loads((out / "report.json").read_text())
    assert report["duplicates"] == dups
    assert f"{dups} exact duplicates" in (out / "report.md").read_text()
