"""`judge.criteria`: several rubrics judged for every row in one run, each with its own
scale, threshold and `score_<name>` column; `filter.rule` (all, any, mean) deciding the row,
and re-deciding it from the stored scores without a judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import cli_refusal, filter_args, job_config
from helpers import numbered_rows, save_single_digit_tokenizer, write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import ConfigError, JudgeConfig, load_config
from alpagasus_ray.data.io import MANIFEST
from alpagasus_ray.data.schema import DECISION, JUDGE_TEXT, REASON_DETAIL, SCORE, Decision
from alpagasus_ray.engines.base import JudgeOutput
from alpagasus_ray.engines.judgement import judge_output_to_judgement
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.criteria import fold_criteria, kept_mask
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.preflight import PreflightError
from alpagasus_ray.text.models import load_tokenizer
from alpagasus_ray.text.prompts import PromptEncoder, rating_messages, shared_prefix_len

NINE = "Rate how correct the answer is, 0 to 9; the score first.\n{instruction}\n{output}"
TWO = {"accuracy": {"rubric": "accuracy"}, "correct": {"rubric": NINE, "scale": [0, 9],
                                                       "threshold": 5}}  # fmt: skip


def config(*sets: str) -> FilterJobConfig:
    base = ["input.uri=in.jsonl", "output.uri=out", "judge.model=m"]
    return load_config(None, base + list(sets), model=FilterJobConfig)


CRITERIA = f"judge.criteria={json.dumps(TWO)}"


@pytest.mark.parametrize(
    ("sets", "said"),
    [
        (['judge.criteria={"Accuracy": {"rubric": "accuracy"}}'],
         "(judge.criteria): judge.criteria: the name 'Accuracy': lower-case letters"),
        (['judge.criteria={"probs": {"rubric": "accuracy"}}'], "not mass or probs"),
        (['judge.criteria={"probs_a": {"rubric": "accuracy"}}'], "nor starting probs_"),
        ([CRITERIA, "judge.rubric=helpfulness"],
         "judge.criteria gives each criterion its rubric and scale: leave judge.rubric unset"),
        ([CRITERIA, "judge.turns=each"], "judge.criteria rates one answer a row"),
        (['judge.criteria={"a": {"rubric": "accuracy", "scale": [0, 9]}}'],
         "scale [0, 9] needs your own rubric"),
        (['judge.criteria={"a": {}}'], "give a criterion its rubric or its rubric_file"),
        (['judge.criteria={"a": {"rubric": "accuracy", "threshold": 6}}'],
         "threshold 6 is outside its scale [0, 5]"),
        ([CRITERIA, "filter.threshold=7"],
         "filter.threshold 7 is outside the scale [0, 5] of judge.criteria.accuracy: give it "
         "a threshold of its own"),
        ([CRITERIA, "filter.rule=mean"],
         "filter.threshold 4.5 is outside [0, 1]: rule mean decides on the mean"),
        ([CRITERIA, "filter.rule=mean", "filter.threshold=0.5"],
         "judge.criteria.correct.threshold: rule mean decides on filter.threshold alone"),
        (["filter.rule=any"], "filter.rule any decides among judge.criteria"),
        ([CRITERIA, "filter.keep_fraction=0.2"],
         "filter.keep_fraction ranks rows by one score: with rule all each criterion"),
        ([CRITERIA, "input.columns.messages=m"], "a custom template rates instruction rows"),
    ],
)  # fmt: skip
def test_criteria_that_cannot_work_are_refused_in_one_line(sets, said):
    with pytest.raises(ConfigError) as e:
        config(*sets)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_the_cli_refuses_a_criterion_before_ray(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", numbered_rows(2, 1))
    args = filter_args(tmp_path, src, "stand-in", 'judge.criteria={"A": {"rubric": "accuracy"}}')
    line, _ = cli_refusal(capsys, args, before_ray=True)
    assert "judge.criteria: the name 'A'" in line


def test_a_criterions_scale_the_tokenizer_cannot_serve_is_refused_by_its_name(tmp_path, capsys):
    folder = save_single_digit_tokenizer(tmp_path / "judge")
    src = write_jsonl(tmp_path / "rows.jsonl", numbered_rows(2, 1))
    ten = {"rubric": "Rate 1 to 10, the score first.\n{output}", "scale": [1, 10]}
    criteria = {"accuracy": {"rubric": "accuracy"}, "ten": ten}
    args = filter_args(tmp_path, src, folder, f"judge.criteria={json.dumps(criteria)}",
                       "filter.threshold=4")  # fmt: skip
    line, _ = cli_refusal(capsys, args, before_ray=True)
    said = "judge.criteria.ten.scale [1, 10]: the judge tokenizer has no single token for "
    said += "the score 10"
    assert line.startswith(f"alpagasus-ray filter: judge tokenizer (judge.model): {said}")


def test_criteria_put_the_row_first_and_a_config_reads_back_the_same():
    cfg = config(CRITERIA, "filter.threshold=2.5")
    assert cfg.judge.layout == "row_first" and cfg.judge.engine_judge().scale == (0, 9)
    again = FilterJobConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg  # a manifest's config, or a dumped YAML, is the same run
    assert config(CRITERIA, "filter.threshold=2.5", "judge.layout=prefix").judge.layout == "prefix"


def test_a_rows_criteria_prompts_share_the_row_ahead_of_their_rubrics(tiny_judge):
    """Row first: the prompts of one row under two rubrics agree up to the end of the row,
    so a prefix cache computes the row once; the split encoder gives the full path's ids."""
    tok = load_tokenizer(str(tiny_judge))
    rows = [{"instruction": "Sort the list.", "input": "3, 1, 2", "output": "1, 2, 3"}]
    ids = [PromptEncoder(tok, rubric, "row_first")(rows)[0] for rubric in ("accuracy", NINE)]
    encoders = [PromptEncoder(tok, rubric, "row_first") for rubric in ("accuracy", NINE)]
    assert [e(rows)[0] for e in encoders] == [e.full(rows)[0] for e in encoders] == ids
    text = rating_messages(*rows[0].values(), NINE, "row_first")[1]["content"]
    row_end = text.index("</example>") + len("</example>")
    rendered = tok.apply_chat_template(
        rating_messages(*rows[0].values(), NINE, "row_first"), tokenize=False,
        add_generation_prompt=True)  # fmt: skip
    through_row = len(tok(rendered[: rendered.index(text[:row_end]) + row_end],
                          add_special_tokens=False)["input_ids"])  # fmt: skip
    assert shared_prefix_len(ids) >= through_row - 1
    assert "[the response in the example above]" in text and "{output}" not in text


def test_rules_decide_from_the_criteria_scores_as_computed_by_hand():
    judge = config(CRITERIA, "filter.threshold=2.5").judge  # accuracy >= 2.5, correct >= 5
    table = pa.table({
        SCORE: [0.5, 0.2, 0.9, 0.6],
        "score_accuracy": [3.0, 1.0, 4.5, 2.0],
        "score_correct": [4.0, 2.0, 8.0, 7.5],
    })  # fmt: skip
    assert kept_mask(table, 2.5, judge, "all").to_pylist() == [False, False, True, False]
    assert kept_mask(table, 2.5, judge, "any").to_pylist() == [True, False, True, True]
    assert kept_mask(table, 0.55, judge, "mean").to_pylist() == [False, False, True, True]


def test_a_failed_criterion_fails_the_row_naming_it_and_keeps_the_others_score():
    judge = JudgeConfig(model="m", mode="generate", criteria=TWO)
    ok = {SCORE: 4.0, JUDGE_TEXT: "4"}
    bad = {SCORE: None, JUDGE_TEXT: "great", DECISION: Decision.FAILED.value,
           "reason": "unparseable_judgement", REASON_DETAIL: "no 0-9 score found"}  # fmt: skip
    row = fold_criteria([ok, bad], judge)
    assert row[DECISION] == "failed" and row["reason"] == "unparseable_judgement"
    assert row[REASON_DETAIL] == "criterion correct: no 0-9 score found"
    assert row["score_accuracy"] == 4.0 and row["judge_text_correct"] == "great"
    assert row[SCORE] is None
    both = fold_criteria([ok, {SCORE: 9.0, JUDGE_TEXT: "9"}], judge)
    assert both[SCORE] == pytest.approx((4 / 5 + 1) / 2) and DECISION not in both


def test_a_criterions_judgement_counts_only_its_own_scales_tokens():
    """One engine reads the tokens of every criterion's scale (here 0-9); a 0-5 criterion's
    expected score and mass come from its own six, whatever the others hold."""
    tokens = {100 + s: s for s in range(10)}
    logprobs = {100 + s: math.log(p) for s, p in ((2, 0.2), (4, 0.4), (7, 0.3))}
    j = judge_output_to_judgement(JudgeOutput(logprobs=logprobs), "logprobs", tokens, 0.5, (0, 5))
    assert j.mass == pytest.approx(0.6) and len(j.probs) == 6
    assert j.score == pytest.approx((2 * 0.2 + 4 * 0.4) / 0.6)


def output_rows(out: Path) -> dict[str, dict]:
    table = pads.dataset(str(out / "data"), partitioning="hive").to_table()
    return {r["row"]: r for r in table.to_pylist()}


def by_hand(row: dict, rule: str, limits: dict[str, float], threshold: float) -> str:
    met = [row[f"score_{n}"] >= t for n, t in limits.items()]
    keep = {"all": all(met), "any": any(met), "mean": row[SCORE] >= threshold}[rule]
    return "kept" if keep else "rejected"


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("criteria-in") / "rows.jsonl", numbered_rows(40, 4))


def test_two_criteria_in_one_run_then_each_rule_re_decided_without_a_judge(
    ray_session, rows, stand_in, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    sets = {"input__columns__id": "row", "output__overwrite": False, "judge__criteria": TWO}
    manifest = run_filter(job_config(str(rows), str(out), stand_in, **sets,
                                     filter__threshold=2.5))  # fmt: skip
    judged = output_rows(out)
    assert manifest.status == "complete" and len(judged) == 40
    limits = {"accuracy": 2.5, "correct": 5.0}
    for r in judged.values():
        assert 0 <= r["score_accuracy"] <= 5 and 0 <= r["score_correct"] <= 9
        assert len(r["score_probs_accuracy"]) == 6 and len(r["score_probs_correct"]) == 10
        assert r[SCORE] == pytest.approx((r["score_accuracy"] / 5 + r["score_correct"] / 9) / 2,
                                         abs=1e-6)  # fmt: skip
        assert r[DECISION] == by_hand(r, "all", limits, 2.5), r["row"]
    assert {r[DECISION] for r in judged.values()} == {"kept", "rejected"}  # both sides met
    criteria = manifest.judge["criteria"]
    assert manifest.judge["rule"] == "all" and criteria["accuracy"]["threshold"] == 2.5
    assert criteria["correct"]["rubric"].startswith("custom sha256:")
    assert criteria["correct"]["scale"] == [0, 9] and criteria["correct"]["rubric_text"] == NINE
    report = (out / "report.md").read_text()
    assert "## Criterion `accuracy`" in report and "## Criterion `correct`" in report
    passed = sum(r["score_correct"] >= 5 for r in judged.values())
    assert f"(`score_correct`): {passed} of 40 judged rows pass" in report

    def no_ray(*_: object) -> None:
        raise AssertionError("a re-decision started Ray, so it could have judged")

    monkeypatch.setattr("alpagasus_ray.filter.job.init_ray", no_ray)
    for rule, threshold, extra in (("any", 2.5, {}), ("mean", 0.45, {}),
                                   ("all", 2.5, {"correct": 7})):  # fmt: skip
        criteria = {n: {**c, **({"threshold": extra[n]} if n in extra else {})}
                    for n, c in TWO.items()}  # fmt: skip
        if rule == "mean":
            criteria = {n: {k: v for k, v in c.items() if k != "threshold"}
                        for n, c in criteria.items()}  # fmt: skip
        cfg = job_config(str(rows), str(out), stand_in, **{**sets, "judge__criteria": criteria},
                         filter__threshold=threshold, filter__rule=rule)  # fmt: skip
        again = run_filter(cfg)
        assert again.redecided is not None and again.redecided.judge_calls == 0
        assert len(again.attempts) == 1  # no new attempt: nothing was judged
        now = output_rows(out)
        limits = {"accuracy": 2.5, "correct": float(extra.get("correct", 5))}
        for key, r in now.items():
            assert r["score_correct"] == judged[key]["score_correct"]  # the stored scores
            assert r[DECISION] == by_hand(r, rule, limits, threshold), (rule, key)
        assert again.judge["rule"] == rule and again.counts["kept"] == sum(
            r[DECISION] == "kept" for r in now.values())  # fmt: skip

    edited = {**TWO, "correct": {**TWO["correct"], "rubric": NINE + "\nBe strict."}}
    cfg = job_config(str(rows), str(out), stand_in, **{**sets, "judge__criteria": edited},
                     filter__threshold=2.5)  # fmt: skip
    with pytest.raises(PreflightError, match=r"judge.criteria was .*'correct': \{'rubric': "
                                             r"'custom sha256:"):  # fmt: skip
        run_filter(cfg)


def test_each_criterion_scores_as_its_rubric_alone_on_the_hf_judge(
    ray_session, rows, tiny_judge, tmp_path
):
    """The real engine: a row's score under each criterion is the score a run of that
    rubric alone gives it (the same layout), on the criterion's own scale."""
    common = {"input__columns__id": "row", "judge__layout": "row_first", "input__limit": 12}
    both = run_filter(job_config(str(rows), str(tmp_path / "both"), tiny_judge, **common,
                                 judge__criteria=TWO, filter__threshold=2.5))  # fmt: skip
    assert both.status == "complete"
    together = output_rows(tmp_path / "both")
    for name, sets in (("accuracy", {}), ("correct", {"judge__rubric": NINE,
                                                      "judge__scale": [0, 9]})):  # fmt: skip
        run_filter(job_config(str(rows), str(tmp_path / name), tiny_judge, **common, **sets,
                              filter__threshold=4))  # fmt: skip
        alone = output_rows(tmp_path / name)
        assert alone.keys() == together.keys()
        for key, r in alone.items():
            assert together[key][f"score_{name}"] == pytest.approx(r[SCORE], abs=1e-5), key
            assert together[key][f"score_probs_{name}"] == pytest.approx(r["score_probs"],
                                                                         abs=1e-5)  # fmt: skip


def test_calibrate_measures_one_criterion_against_labels(ray_session, rows, stand_in, tmp_path):
    from sklearn.metrics import roc_auc_score

    out = tmp_path / "out"
    run_filter(job_config(str(rows), str(out), stand_in, input__columns__id="row",
                          judge__criteria=TWO, filter__threshold=2.5))  # fmt: skip
    judged = output_rows(out)
    labels = [{"index": r["source_row"], "good": (r["score_accuracy"] + 3 * (i % 3 == 0)) > 2.8}
              for i, r in enumerate(judged.values())]  # fmt: skip
    path = write_jsonl(tmp_path / "labels.jsonl", labels)
    base = ["calibrate", str(out), "--labels", str(path), "--label", "good", "--resamples", "50"]
    to = tmp_path / "cal"
    assert main([*base, "--criterion", "accuracy", "--to", str(to)]) == 0
    result = json.loads((to / "calibration.json").read_text())
    by_row = {r["source_row"]: r["score_accuracy"] for r in judged.values()}
    expected = roc_auc_score([lb["good"] for lb in labels], [by_row[lb["index"]] for lb in labels])
    assert result["roc_auc"] == pytest.approx(expected)
    assert result["criterion"] == "accuracy" and result["scale"] == [0, 5]
    assert result["at_job_threshold"]["threshold"] == 2.5
    assert main([*base, "--to", str(tmp_path / "none")]) == 2  # decided per criterion
    assert main([*base, "--criterion", "fluency", "--to", str(tmp_path / "no")]) == 2


def test_conversation_rows_take_the_papers_criteria_each_on_the_last_answer(
    ray_session, stand_in, tmp_path
):
    """A chat row under two paper criteria: one prompt each, the conversation rendered as
    that rubric rates its last answer alone (the stand-in's score is a hash of the prompt,
    so equal scores mean equal prompts)."""
    chats = [{"row": f"c{i}", "messages": [
        {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": f"And {i}?"}, {"role": "assistant", "content": f"No, {i}."}]}
        for i in range(6)]  # fmt: skip
    src = write_jsonl(tmp_path / "chats.jsonl", chats)
    common = {"input__columns__id": "row", "input__columns__messages": "messages"}
    criteria = {"accuracy": {"rubric": "accuracy"}, "helpfulness": {"rubric": "helpfulness"}}
    manifest = run_filter(job_config(str(src), str(tmp_path / "both"), stand_in, **common,
                                     judge__criteria=criteria, filter__rule="any",
                                     filter__threshold=2.5))  # fmt: skip
    assert manifest.status == "complete" and manifest.counts["quarantined"] == 0
    both = output_rows(tmp_path / "both")
    for name in criteria:
        run_filter(job_config(str(src), str(tmp_path / name), stand_in, **common,
                              judge__rubric=name, judge__layout="row_first"))  # fmt: skip
        alone = output_rows(tmp_path / name)
        for key, r in alone.items():
            assert both[key][f"score_{name}"] == pytest.approx(r[SCORE], abs=1e-9), key


def test_an_exact_copy_takes_its_originals_criteria_scores(ray_session, stand_in, tmp_path):
    rows = numbered_rows(10, 6)
    copies = [{**r, "row": f"copy-{r['row']}"} for r in rows[:5]]
    src = write_jsonl(tmp_path / "rows.jsonl", rows + copies)
    manifest = run_filter(job_config(str(src), str(tmp_path / "out"), stand_in,
                                     input__columns__id="row", judge__criteria=TWO,
                                     filter__threshold=2.5))  # fmt: skip
    assert manifest.status == "complete" and manifest.duplicates == 5
    got = output_rows(tmp_path / "out")
    for copy in copies:
        twin, original = got[copy["row"]], got[copy["row"].removeprefix("copy-")]
        assert twin["duplicate_of"] is not None
        for column in ("score_accuracy", "score_correct", "score_probs_correct", DECISION):
            assert twin[column] == original[column] is not None, column


def test_a_resume_judges_again_only_the_criterion_the_engine_failed(
    ray_session, rows, stand_in, tmp_path
):
    """A killed run's row whose `correct` criterion met an engine error, its `accuracy`
    judged (stored as 0.123, a score the stand-in never gives): the rerun judges `correct`
    alone, keeps 0.123, and decides the row from both."""
    out = tmp_path / "out"
    cfg = job_config(str(rows), str(out), stand_in, input__columns__id="row",
                     output__overwrite=False, judge__criteria=TWO,
                     filter__threshold=2.5)  # fmt: skip
    run_filter(cfg)
    clean = output_rows(out)
    (out / MANIFEST).unlink()  # as a killed run leaves it
    judged = sorted((out / "data" / "decision=kept").glob("*.parquet"))
    judged = judged or sorted((out / "data" / "decision=rejected").glob("*.parquet"))
    table = pq.read_table(judged[0])
    victim = table.slice(0, 1).to_pylist()[0]
    pq.write_table(table.slice(1), judged[0])
    victim.update(score=None, score_correct=None, score_probs_correct=None, score_accuracy=0.123,
                  reason="engine_error", reason_detail="criterion correct: boom")  # fmt: skip
    failed = out / "data" / "decision=failed"
    failed.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist([victim], schema=table.schema), failed / "err.parquet")
    manifest = run_filter(cfg)
    assert manifest.status == "complete", manifest.invariant
    last = manifest.attempts[-1]
    assert last["engine_errors_retried"] == 1 and last["criterion_scores_reused"] == 1
    assert last["rows_written"] == 1
    after = output_rows(out)
    row, before = after[victim["row"]], clean[victim["row"]]
    assert row["score_accuracy"] == 0.123 != before["score_accuracy"]  # not judged again
    assert row["score_correct"] == before["score_correct"]  # judged again: the same hash
    assert row[SCORE] == pytest.approx((0.123 / 5 + row["score_correct"] / 9) / 2, abs=1e-6)
    assert row[DECISION] == "rejected"  # accuracy 0.123 < 2.5
    for key, r in after.items():
        if key != victim["row"]:
            assert (r[DECISION], r[SCORE]) == (clean[key][DECISION], clean[key][SCORE]), key
