"""The API judge's pieces that need no server: the job-wide budget's arithmetic, reading the
score digits from a top-k list, the config's rules, and the key kept out of errors. The
engine itself runs against vLLM's real server in the vLLM lane (`test_api_engine.py`)."""

from __future__ import annotations

import math

import pytest

from alpagasus_ray.config import ConfigError, JobConfig, build_config
from alpagasus_ray.engines.api import digit_logprobs, digit_of, redact, tokens_at_most
from alpagasus_ray.engines.api_budget import Budget
from alpagasus_ray.engines.base import JudgeOutput
from alpagasus_ray.engines.judgement import judge_output_to_judgement


def test_requests_are_spaced_to_the_rate_over_every_caller():
    b = Budget(requests_per_minute=120)  # one every 0.5 s, whoever asks
    waits = [b.reserve(10, 0.0, now=100.0) for _ in range(4)]
    assert waits == [0.0, 0.5, 1.0, 1.5]
    assert b.reserve(10, 0.0, now=103.0) == 0.0  # idle time is not saved up into a burst


def test_tokens_per_minute_spaces_by_size():
    b = Budget(tokens_per_minute=6000)  # 100 tokens a second
    assert b.reserve(300, 0.0, now=0.0) == 0.0
    assert b.reserve(100, 0.0, now=0.0) == pytest.approx(3.0)  # after the first's 300
    assert b.reserve(100, 0.0, now=0.0) == pytest.approx(4.0)


def test_the_cost_cap_refuses_before_spending_more():
    b = Budget(max_cost=1.0)
    assert b.reserve(1, 0.4, now=0.0) == 0.0
    assert b.reserve(1, 0.4, now=0.0) == 0.0
    assert b.reserve(1, 0.4, now=0.0) is None  # 1.2 reserved at most would pass the cap
    b.settle(reserved=0.8, actual=0.3)  # what they really cost, from the usage
    assert b.reserve(1, 0.4, now=0.0) == 0.0 and b.spent == pytest.approx(0.3)
    assert b.refused == 1


def test_without_a_tokenizer_the_cap_reserves_no_fewer_tokens_than_the_prompt_has(tiny_judge):
    from alpagasus_ray.models import load_tokenizer
    from alpagasus_ray.prompts import rating_messages
    from alpagasus_ray.tiny import synthetic_examples

    tok = load_tokenizer(str(tiny_judge))
    odd = {"instruction": "Übersetze: ünïcödé ✓ 漢字 🙂", "input": "", "output": "ça va"}
    for row in [*synthetic_examples(8, seed=40), odd]:
        messages = rating_messages(
            row["instruction"], row["input"], row["output"], "accuracy", "prefix"
        )
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        assert len(ids) <= tokens_at_most(messages, None)
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert len(tok(text, add_special_tokens=False)["input_ids"]) <= tokens_at_most(None, text)


def test_score_digits_are_read_by_their_text():
    assert [digit_of(t) for t in ("4", " 4", "▁3", "Ġ5", "0")] == [4, 4, 3, 5, 0]
    assert [digit_of(t) for t in ("6", "45", "4.", "four", " ", "")] == [None] * 6
    top = [("4", math.log(0.5)), (" 4", math.log(0.1)), ("3", math.log(0.2)), ("The", -0.1)]
    got = digit_logprobs(top)
    assert got.keys() == {3, 4}
    assert math.exp(got[4]) == pytest.approx(0.6) and math.exp(got[3]) == pytest.approx(0.2)


def test_digits_outside_the_top_k_fail_the_row_instead_of_a_guess():
    digits = {d: d for d in range(6)}
    few = JudgeOutput(logprobs=digit_logprobs([("5", math.log(0.2)), ("x", math.log(0.7))]))
    j = judge_output_to_judgement(few, "logprobs", digits, min_score_mass=0.5)
    assert j.score is None and j.reason == "low_score_mass" and j.mass == pytest.approx(0.2)
    none = JudgeOutput(logprobs=digit_logprobs([("x", -0.1)]))
    assert judge_output_to_judgement(none, "logprobs", digits, 0.0).reason == "low_score_mass"


def _job(**judge) -> JobConfig:
    data = {"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}, "judge": judge}
    return build_config(JobConfig, data)


def test_an_api_judge_needs_a_url_and_loads_no_model_by_its_name():
    with pytest.raises(ConfigError, match=r"judge.engine=openai needs judge.api.base_url"):
        _job(engine="openai", model="gpt-4o-mini")
    cfg = _job(engine="openai", model="gpt-4o-mini", api={"base_url": "http://127.0.0.1:1/v1"})
    assert cfg.judge.tokenizer_name() is None  # a served name, not a tokenizer to load
    assert _job(model="org/judge").judge.tokenizer_name() == "org/judge"
    with pytest.raises(ConfigError, match=r"judge.api.top_logprobs"):
        _job(engine="openai", model="m", api={"base_url": "http://x/v1", "top_logprobs": 21})


def test_the_key_is_masked_in_error_text():
    assert redact("Incorrect API key provided: sk-abc123", "sk-abc123") == (
        "Incorrect API key provided: ***"
    )
    assert redact("no key here", "") == "no key here"
