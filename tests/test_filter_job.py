"""The whole filter on local Ray with a tiny judge: invariants, partitions, determinism."""

import json
import shutil

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import filter_args, job_config, write_cut_array
from helpers import actor_classes, write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.metrics import stage_metrics
from alpagasus_ray.filter.preflight import PreflightError

BAD_ROWS = [
    {"instruction": "null output", "input": "", "output": None, "category": "bad"},
    {"instruction": "", "input": "", "output": "empty instruction", "category": "bad"},
    {"instruction": "number output", "input": "", "output": 7, "category": "bad"},
    {"instruction": "missing output", "input": "", "category": "bad"},
    {"instruction": "too long", "input": "word " * 2500, "output": "x", "category": "bad"},
    '{"instruction": "broken json line", ',
    '["not", "an", "object"]',
]
EXPECTED_REASONS = {
    "null_field",
    "empty_field",
    "non_string_field",
    "missing_field",
    "prompt_too_long",
    "malformed_json",
    "not_an_object",
}
THRESHOLD = 2.0


def output_rows(out_dir) -> list[dict]:
    table = pads.dataset(out_dir / "data", format="parquet", partitioning="hive").to_table()
    return table.to_pylist()


def decisions(out_dir) -> dict[str, dict]:
    """By id (duplicate examples share a content id and so a decision)."""
    return {r["id"]: r for r in output_rows(out_dir)}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rows = synthetic_examples(48, seed=11)
    for i, r in enumerate(rows):
        r["row_no"] = i  # an extra column that must come through untouched
    path = write_jsonl(tmp_path_factory.mktemp("in") / "shard-0.jsonl", rows + BAD_ROWS)
    return path, rows


def started_by(run, *args) -> tuple[object, list[str]]:
    """`run(*args)`'s result and the classes of the actors it started, sorted."""
    before = actor_classes()
    result = run(*args)
    return result, sorted(c for key, c in actor_classes().items() if key not in before)


@pytest.fixture(scope="module")
def filtered(ray_session, tiny_judge, source, tmp_path_factory):
    """The tiny judge's run: its output folder, manifest and the actors it started."""
    out = tmp_path_factory.mktemp("out") / "run1"
    cfg = job_config(str(source[0]), str(out), tiny_judge, filter__threshold=THRESHOLD)
    manifest, actors = started_by(run_filter, cfg)
    return out, manifest, actors


def test_a_run_starts_one_ledger_and_its_replicas_and_no_prompt_actor_here(
    filtered, stand_in, tmp_path
):
    """Each actor is a Python process to start: a run has one bookkeeping actor (progress
    and the contents seen) and its judge's replicas. The HF engine's replicas build their
    own prompts with the tokenizer they load anyway; the stand-in judge, with none, builds
    them in tasks. (Prompt actors, for the vLLM engine and an API judge with a tokenizer:
    the vLLM lane.)"""
    replica = "MapWorker(MapBatches(ScoreStage))"
    assert filtered[2] == sorted(["RunLedger", replica])
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(8, seed=1))
    manifest, actors = started_by(run_filter, job_config(str(src), str(tmp_path / "out"), stand_in))
    assert manifest.invariant_ok and manifest.rows_read == 8
    assert actors == sorted(["RunLedger", replica])


def test_conservation_invariant(filtered, source):
    out, manifest, _ = filtered
    n_in = len(source[1]) + len(BAD_ROWS)
    assert manifest.rows_read == n_in
    assert sum(manifest.counts.values()) == n_in
    assert manifest.invariant_ok and manifest.status == "complete"
    assert len(output_rows(out)) == n_in
    assert manifest.counts["quarantined"] == len(BAD_ROWS)


def test_threshold_splits_scores(filtered):
    rows = decisions(filtered[0]).values()
    kept = [r["score"] for r in rows if r["decision"] == "kept"]
    rejected = [r["score"] for r in rows if r["decision"] == "rejected"]
    assert kept and rejected, "the tiny judge's spread should fill both partitions"
    assert min(kept) >= THRESHOLD > max(rejected)
    for r in rows:
        if r["decision"] in ("kept", "rejected"):
            assert sum(r["score_probs"]) == pytest.approx(1.0, abs=1e-4)
            if r["duplicate_of"] is None:  # judged itself; a copy took another row's score
                assert r["num_prompt_tokens"] > 0
            else:
                assert r["num_prompt_tokens"] is None


def test_partitions_are_plain_parquet(filtered):
    out = filtered[0]
    for part in ("kept", "rejected", "quarantined"):
        table = pq.read_table(out / "data" / f"decision={part}")
        assert table.num_rows > 0
        assert {"id", "instruction", "input", "output", "score", "reason"} <= set(
            table.column_names
        )
        assert "_prompt_token_ids" not in table.column_names


def test_extra_columns_survive(filtered, source):
    rows = output_rows(filtered[0])
    # JSON input: carried keys keep their JSON kind's type (`filter/carried.py`).
    by_row_no = {r["row_no"]: r for r in rows if r["row_no"] is not None}
    assert sorted(by_row_no) == list(range(len(source[1])))
    for i, original in enumerate(source[1]):
        got = by_row_no[i]
        assert (got["instruction"], got["output"]) == (original["instruction"], original["output"])
        assert got["category"] == original["category"]


def test_every_quarantine_reason_is_recorded(filtered):
    rows = [r for r in decisions(filtered[0]).values() if r["decision"] == "quarantined"]
    assert {r["reason"] for r in rows} == EXPECTED_REASONS
    assert all(r["reason_detail"] and r["score"] is None for r in rows)


def test_manifest_report_and_regeneration(filtered, tiny_judge, capsys):
    out, manifest, _ = filtered
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["counts"] == manifest.counts
    assert on_disk["prompt_hash"] and on_disk["versions"]["ray"]
    assert on_disk["config"]["filter"]["threshold"] == THRESHOLD
    for name in ("report.json", "report.md", "score_histogram.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == manifest.counts
    assert set(report["per_category"]) >= {"math", "geography", "bad"}
    assert report["judged"] == {**manifest.judge, "input": manifest.config["input"]["uri"]}
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# AlpaGasus filter report")
    # The report alone says what judged which input (regenerated from the manifest here).
    assert (
        f"Judge `{tiny_judge}` (hf engine, logprobs mode, accuracy, scale 0-5, prefix layout)" in md
    )
    assert f"on `{manifest.config['input']['uri']}`." in md


def test_manifest_says_each_stage_s_rows_and_speed(filtered, source):
    """Where the time went, per Ray Data operator in pipeline order (the HF judge's
    prompts built in its replicas, no operator of their own)."""
    stages = filtered[1].stages
    names = [s["stage"] for s in stages]
    parts = ("Read", "ValidateStage", "ScoreStage", "DecideStage", "Write")
    order = [next(i for i, n in enumerate(names) if part in n) for part in parts]
    assert order == sorted(order), names
    assert not any("PromptStage" in n for n in names), names
    # The storage check runs in the write's own task: where each batch is written.
    assert any("MapBatches(OnSharedDisk)->Write" in n for n in names), names
    for stage in stages:
        assert stage["rows"] == len(source[1]) + len(BAD_ROWS), stage  # every row went through
        rate, wall = stage["rows_per_s"], stage["wall_s"]  # wall rounded to the millisecond
        assert abs(rate * wall - stage["rows"]) <= rate * 0.0005 + 0.01, stage
        assert stage["rows_per_task_s"] > 0


def test_stage_figures_that_cannot_be_read_cost_no_manifest(caplog):
    class StatsGone:  # a Dataset whose stats Ray could not give back
        def get_stats_summary(self):
            raise RuntimeError("stats actor is gone")

    assert stage_metrics(StatsGone()) == []
    assert "stats actor is gone" in caplog.text


def test_rerun_gives_identical_decisions(filtered, source, tiny_judge, tmp_path):
    cfg = job_config(
        str(source[0]), str(tmp_path / "run2"), tiny_judge, filter__threshold=THRESHOLD
    )
    run_filter(cfg)
    first, second = decisions(filtered[0]), decisions(tmp_path / "run2")
    assert first.keys() == second.keys()
    # Which rows share a batch varies from run to run (blocks stream in as they are read and
    # are re-blocked for the replicas), and float32 kernels round by the batch's shape
    # (padding width, rows): scores agree to float noise, measured up to a few 1e-6 here;
    # decisions agree exactly.
    for rid, row in first.items():
        assert second[rid]["decision"] == row["decision"]
        if row["score"] is not None:
            assert second[rid]["score"] == pytest.approx(row["score"], abs=1e-4)


def test_a_finished_output_asked_for_again_is_complete_and_untouched(
    filtered, source, tiny_judge, capsys
):
    """The same command again (a scheduler retrying a task that succeeded): exit 0, one line
    with the counts, the output as it was; a change that needs judging is still refused."""
    from alpagasus_ray.cli import main

    out, manifest, _ = filtered
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    cfg = job_config(str(source[0]), str(out), tiny_judge, output__overwrite=False)
    again = run_filter(cfg)
    assert again.already_complete and again.to_json() == (out / "manifest.json").read_bytes()
    config = out.parent / "same.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    assert main(["filter", "--config", str(config)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    c = manifest.counts
    assert line == (
        f"{out} is already complete with these settings, nothing to do: rows read "
        f"{manifest.rows_read} = kept {c['kept']} + rejected {c['rejected']} + quarantined "
        f"{c['quarantined']} + failed {c['failed']}"
    )
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    other = job_config(str(source[0]), str(out), tiny_judge, output__overwrite=False,
                       judge__mode="generate")  # fmt: skip
    with pytest.raises(PreflightError, match="holds a finished run .judge.mode"):
        run_filter(other)
    # A run that ended inconsistent is no success to repeat: still refused, saying why.
    broken = out.parent / "inconsistent"
    shutil.copytree(out, broken)
    text = (broken / "manifest.json").read_text()
    (broken / "manifest.json").write_text(text.replace('"complete"', '"inconsistent"'))
    again = cfg.model_copy(update={"output": cfg.output.model_copy(update={"uri": str(broken)})})
    with pytest.raises(PreflightError, match="holds a finished run that did not add up"):
        run_filter(again)


def test_parquet_shards_column_mapping_and_generate_mode(ray_session, tiny_judge, tmp_path):
    import pyarrow as pa

    rows = synthetic_examples(12, seed=2)
    shards = tmp_path / "dolly"
    shards.mkdir()
    for k in range(2):
        part = rows[k * 6 : (k + 1) * 6]
        pq.write_table(
            pa.table(
                {
                    "instruction": [r["instruction"] for r in part],
                    "context": [r["input"] for r in part],
                    "response": [r["output"] for r in part],
                    "category": [r["category"] for r in part],
                }
            ),
            shards / f"part-{k}.parquet",
        )
    cfg = job_config(
        str(shards),
        str(tmp_path / "out"),
        tiny_judge,
        input__columns__input="context",
        input__columns__output="response",
        judge__mode="generate",
        judge__max_new_tokens=4,
    )
    manifest = run_filter(cfg)
    assert manifest.rows_read == 12 == sum(manifest.counts.values())
    got = decisions(tmp_path / "out")
    assert {r["input"] for r in got.values()} == {r["input"] for r in rows}
    assert all(r["judge_text"] is not None for r in got.values())
    # A random judge writes no readable score: such rows fail, with its text kept.
    for r in got.values():
        assert r["decision"] in ("failed", "kept", "rejected")
        if r["decision"] == "failed":
            assert r["reason"] == "unparseable_judgement"


JOB = "judge: {num_cpus_per_replica: 0.5, batch_size: 16}\n"


def test_a_cut_json_array_after_the_first_file_fails_with_its_path(
    ray_session, capsys, tmp_path, tiny_judge
):
    """Preflight samples the first file only: a later broken array fails its read, once,
    as the file error a corrupt Parquet file is, not as one quarantined row."""
    write_jsonl(tmp_path / "in" / "a.jsonl", synthetic_examples(8, seed=1))
    bad, error = write_cut_array(tmp_path / "in" / "b.json")
    code = main(filter_args(tmp_path, tmp_path / "in", tiny_judge, config=JOB))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"alpagasus-ray filter: input file ({bad}): cannot read it: {error}"
    ), err


def test_a_cut_json_array_is_skipped_and_a_broken_line_stays_one_row(
    ray_session, tmp_path, tiny_judge
):
    rows = synthetic_examples(8, seed=1)
    write_jsonl(tmp_path / "in" / "a.jsonl", [*rows, '{"instruction": "broken json line", '])
    bad, error = write_cut_array(tmp_path / "in" / "b.json")
    cfg = job_config(
        str(tmp_path / "in"), str(tmp_path / "out"), tiny_judge, input__on_unreadable_file="skip"
    )
    manifest = run_filter(cfg)
    assert [(r["path"], r["rows"], r["error"]) for r in manifest.skipped_files] == [
        (str(bad), 0, error)
    ]
    assert manifest.status == "complete"
    assert manifest.rows_read == len(rows) + 1 == sum(manifest.counts.values())
    quarantined = [r for r in output_rows(tmp_path / "out") if r["decision"] == "quarantined"]
    assert [r["reason"] for r in quarantined] == ["malformed_json"]


# One JSON shape per block of 4 rows (judge.batch_size, input.rows_per_block): blocks whose
# own inference would give `meta` int64, string, struct, list, bool or null.
SHAPES = [None, 7, "seven", {"k": [1, "a"]}, [1, 2.5], True, 2.5]


def test_a_json_extra_of_mixed_shapes_is_json_text_and_the_others_keep_their_types(
    ray_session, tmp_path, tiny_judge
):
    rows = synthetic_examples(4 * len(SHAPES), seed=5)
    for i, r in enumerate(rows):
        r["row_no"], r["meta"] = i, SHAPES[i // 4]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    cfg = job_config(str(src), str(out), tiny_judge, judge__batch_size=4, input__rows_per_block=4)
    manifest = run_filter(cfg)
    assert manifest.status == "complete" and manifest.rows_read == len(rows)
    assert manifest.json_text_columns == ["meta"]
    got = output_rows(out)
    assert sorted(r["row_no"] for r in got) == list(range(len(rows)))  # ints, as read
    for r in got:
        meta = None if r["meta"] is None else json.loads(r["meta"])
        assert meta == rows[r["row_no"]]["meta"]
    report = json.loads((out / "report.json").read_text())
    assert set(report["per_category"]) == {r["category"] for r in rows}  # plain, not '"math"'


def test_parquet_extras_whose_types_differ_across_files_come_through(
    ray_session, tmp_path, tiny_judge
):
    """File a has `meta` int64, file b string: carried as JSON text (found from the footers
    before judging); `row_no`, the same type in both, keeps its Parquet type."""
    import pyarrow as pa

    rows = synthetic_examples(16, seed=6)
    metas = [*range(8), *(f"m{i}" for i in range(8))]
    (tmp_path / "in").mkdir()
    for k, name in enumerate("ab"):
        part = range(8 * k, 8 * k + 8)
        table = {c: [rows[i][c] for i in part] for c in ("instruction", "input", "output")}
        table |= {"row_no": list(part), "meta": [metas[i] for i in part]}
        pq.write_table(pa.table(table), tmp_path / "in" / f"{name}.parquet")
    out = tmp_path / "out"
    manifest = run_filter(job_config(str(tmp_path / "in"), str(out), tiny_judge))
    assert manifest.status == "complete" and manifest.rows_read == 16
    got = output_rows(out)
    assert sorted(r["row_no"] for r in got) == list(range(16))
    assert all(json.loads(r["meta"]) == metas[r["row_no"]] for r in got)
    assert manifest.json_text_columns == ["meta"]
