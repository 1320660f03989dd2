"""`judge.scale: [lo, hi]`: a rubric's own scores, read from one token each in logprobs mode
(checked against the real tokenizer at start), parsed in generate mode, and followed by the
threshold, the report and the run's identity."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from conftest import cli_refusal, filter_args, job_config
from helpers import numbered_rows, save_single_digit_tokenizer, write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import ConfigError, load_config
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.engines.api import digit_logprobs, digit_of
from alpagasus_ray.engines.base import JudgeOutput
from alpagasus_ray.engines.judgement import judge_output_to_judgement, score_token_ids
from alpagasus_ray.engines.parse import parse_score, score_line_regex
from alpagasus_ray.engines.vllm import sampling_params
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.preflight import PreflightError
from alpagasus_ray.text.models import load_tokenizer

TEN = "Rate the answer from 1 (useless) to 10 (perfect); the score first.\n{instruction}\n{output}"
NINE = "Rate the answer from 0 to 9; the score first.\n{instruction}\n{output}"


def config(*sets: str) -> FilterJobConfig:
    base = ["input.uri=in.jsonl", "output.uri=out", "judge.model=m"]
    return load_config(None, base + list(sets), model=FilterJobConfig)


@pytest.mark.parametrize(
    ("sets", "said"),
    [
        (["judge.scale=[5, 1]"], "(judge.scale): judge.scale: [5, 1] is not a scale"),
        (["judge.scale=[-1, 5]"], "[-1, 5] is not a scale [lo, hi] of whole scores, 0 <= lo < hi"),
        (["judge.scale=[1, 10]"], "judge.scale [1, 10] needs your own judge.rubric: the paper's "
                                  "accuracy rubric asks for a score from 0 to 5"),
        (["filter.threshold=7"], "filter.threshold 7 is outside judge.scale [0, 5]"),
        ([f"judge.rubric={json.dumps(TEN)}", "judge.scale=[1, 10]", "filter.threshold=0.5"],
         "filter.threshold 0.5 is outside judge.scale [1, 10]"),
    ],
)  # fmt: skip
def test_a_scale_that_cannot_work_is_refused_in_one_line(sets, said):
    with pytest.raises(ConfigError) as e:
        config(*sets)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_users_rubric_takes_its_own_scale_and_threshold():
    cfg = config(f"judge.rubric={json.dumps(TEN)}", "judge.scale=[1, 10]", "filter.threshold=8")
    assert cfg.judge.scale == (1, 10) and cfg.filter.threshold == 8


def test_score_tokens_cover_the_scale_or_name_the_first_score_without_one(tmp_path):
    tok = load_tokenizer(str(save_single_digit_tokenizer(tmp_path / "digits")))
    assert sorted(set(score_token_ids(tok, (0, 9)).values())) == list(range(10))
    with pytest.raises(ValueError, match=r"judge.scale \[1, 10\]: .* no single token for the "
                                         r"score 10, .*1-10 usually does not"):  # fmt: skip
        score_token_ids(tok, (1, 10))


def test_the_expected_score_runs_over_the_scale():
    tokens = {100 + s: s for s in range(1, 11)}  # token id -> score, 1..10
    probs = {100 + s: p for s, p in ((2, 0.1), (7, 0.3), (10, 0.5))}  # mass 0.9
    out = JudgeOutput(logprobs={t: math.log(p) for t, p in probs.items()})
    j = judge_output_to_judgement(out, "logprobs", tokens, 0.5, (1, 10))
    assert j.mass == pytest.approx(0.9)
    assert j.score == pytest.approx((2 * 0.1 + 7 * 0.3 + 10 * 0.5) / 0.9)
    assert len(j.probs) == 10 and j.probs[9] == pytest.approx(0.5 / 0.9)


@pytest.mark.parametrize(
    ("text", "scale", "score"),
    [("8", (1, 10), 8.0), ("Score: 7/10", (1, 10), 7.0), ("7/10", (0, 5), None),
     ("0", (1, 10), None), ("9", (0, 5), None), ("4/5", (0, 5), 4.0), ("12", (0, 100), 12.0)],
)  # fmt: skip
def test_generate_mode_parses_scores_on_the_scale(text, scale, score):
    assert parse_score(text, scale) == score
    j = judge_output_to_judgement(JudgeOutput(text=text), "generate", {}, 0.5, scale)
    assert j.score == score
    if score is None:
        assert j.detail == f"no {scale[0]}-{scale[1]} score found in the judge's text"


@pytest.mark.parametrize("scale", [(0, 5), (1, 10), (0, 9)])
def test_every_answer_the_score_regex_allows_parses_to_its_leading_score(scale):
    """What structured outputs hold a judge to (`judge.structured_score`) always parses."""
    regex, rng = re.compile(score_line_regex(scale)), random.Random(5)
    tails = ["", "\n", "\nGood.", "\n\n3/5 overall", "\nScore: 1\n**9**"]
    for score in range(scale[0], scale[1] + 1):
        for text in [f"{score}", f"{score}.{rng.randrange(10)}", f"{score}.0"]:
            for tail in tails:
                answer = text + tail
                on_scale = float(text) <= scale[1]
                assert bool(regex.fullmatch(answer)) == on_scale, answer
                if on_scale:
                    assert parse_score(answer, scale) == float(text), answer
    for off in ["Score: 4", f"{scale[1] + 1}", f"{scale[0] - 1}", " 4", "4/5", "four"]:
        assert not regex.fullmatch(off), off


def test_structured_scores_are_asked_of_vllm_and_refused_where_they_cannot_work():
    judge = config("judge.engine=vllm", "judge.mode=generate", "judge.structured_score=true",
                   f"judge.rubric={json.dumps(TEN)}", "judge.scale=[1, 10]",
                   "filter.threshold=8").judge  # fmt: skip
    regex = sampling_params(judge)["structured_outputs"]["regex"]
    assert regex == score_line_regex((1, 10))
    refusals = {"judge.mode=generate": "needs an engine that constrains decoding",  # hf
                "judge.engine=vllm": "judge.structured_score is for mode generate"}  # fmt: skip
    for setting, said in refusals.items():
        with pytest.raises(ConfigError, match=said):
            config("judge.structured_score=true", setting)


def test_an_api_judges_top_tokens_are_read_on_the_scale():
    assert [digit_of(t, (1, 10)) for t in ("10", " 10", "▁9", "0", "04", "²", "11")] == [
        10, 10, 9, None, None, None, None,
    ]  # fmt: skip
    got = digit_logprobs([("10", math.log(0.4)), (" 10", math.log(0.1)), ("6", -1.0)], (1, 10))
    assert got[10] == pytest.approx(math.log(0.5)) and set(got) == {6, 10}


def test_the_cli_refuses_a_scale_the_tokenizer_cannot_serve_before_ray(tmp_path, capsys):
    folder = save_single_digit_tokenizer(tmp_path / "judge")
    src = write_jsonl(tmp_path / "rows.jsonl", synthetic_examples(4))
    args = filter_args(tmp_path, src, folder, f"judge.rubric={json.dumps(TEN)}",
                       "judge.scale=[1, 10]", "filter.threshold=8")  # fmt: skip
    line, _ = cli_refusal(capsys, args, before_ray=True)
    said = "judge.scale [1, 10]: the judge tokenizer has no single token for the score 10"
    assert line.startswith(f"alpagasus-ray filter: judge tokenizer (judge.model): {said}")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("scale-in") / "rows.jsonl", numbered_rows(30, 8))


def judged(out: Path) -> list[dict]:
    table = pads.dataset(str(out / "data"), partitioning="hive").to_table().to_pylist()
    return [r for r in table if r["decision"] in ("kept", "rejected")]


def test_the_hf_judge_scores_on_a_0_to_9_scale(ray_session, rows, tiny_judge, tmp_path):
    """The real engine reads ten score tokens: each row's distribution has ten entries, its
    score is their expectation, and the cut and the report follow the scale."""
    out = tmp_path / "out"
    cfg = job_config(str(rows), str(out), tiny_judge, input__columns__id="row",
                     judge__rubric=NINE, judge__scale=[0, 9], filter__threshold=4.5)  # fmt: skip
    manifest = run_filter(cfg)
    assert manifest.status == "complete" and manifest.judge["scale"] == [0, 9]
    got = judged(out)
    assert len(got) == 30
    for r in got:
        assert len(r["score_probs"]) == 10 and sum(r["score_probs"]) == pytest.approx(1.0)
        assert r["score"] == pytest.approx(sum(s * p for s, p in enumerate(r["score_probs"])))
        assert r["decision"] == ("kept" if r["score"] >= 4.5 else "rejected")
    assert "scale 0-9" in (out / "report.md").read_text()
    labels = [{"index": r["source_row"], "good": r["score"] >= 4.5} for r in got]
    to = tmp_path / "calibration"
    args = ["calibrate", str(out), "--labels", str(write_jsonl(tmp_path / "l.jsonl", labels)),
            "--label", "good", "--to", str(to), "--resamples", "50"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((to / "calibration.json").read_text())
    assert result["scale"] == [0, 9] and result["roc_auc"] == 1.0


def test_the_stand_in_judges_on_the_scale_and_a_resume_under_another_is_refused(
    ray_session, rows, stand_in, tmp_path
):
    out = tmp_path / "out"
    sets = {"input__columns__id": "row", "output__overwrite": False, "judge__rubric": TEN}
    manifest = run_filter(job_config(str(rows), str(out), stand_in, **sets,
                                     judge__scale=[1, 10], filter__threshold=6))  # fmt: skip
    scores = [r["score"] for r in judged(out)]
    assert manifest.status == "complete" and len(scores) == 30
    assert all(1 <= s <= 10 for s in scores) and max(scores) > 5  # spread over the scale
    other = job_config(str(rows), str(out), stand_in, **sets, judge__scale=[1, 9],
                       filter__threshold=6)  # fmt: skip
    with pytest.raises(PreflightError, match=r"judge.scale was \[1, 10\], now \[1, 9\]"):
        run_filter(other)
