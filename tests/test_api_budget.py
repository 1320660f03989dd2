"""The API judge's pieces that need no server: the job-wide budget's arithmetic and its
spending kept over a restart of its actor and over a resume, reading the score digits from a
top-k list, the config's rules, and the key kept out of errors. The
engine itself runs against vLLM's real server in the vLLM lane (`test_api_engine.py`)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from alpagasus_ray.core.config import ConfigError, build_config
from alpagasus_ray.engines.api import digit_logprobs, digit_of, redact, tokens_at_most
from alpagasus_ray.engines.api_budget import SPEND_FILE, Budget, JobAPI, job_api
from alpagasus_ray.engines.base import JudgeOutput
from alpagasus_ray.engines.judgement import judge_output_to_judgement
from alpagasus_ray.filter.config import FilterJobConfig


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
    from alpagasus_ray.demo import synthetic_examples
    from alpagasus_ray.text.models import load_tokenizer
    from alpagasus_ray.text.prompts import rating_messages

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


def _job(**judge) -> FilterJobConfig:
    data = {"input": {"uri": "in.jsonl"}, "output": {"uri": "out"}, "judge": judge}
    return build_config(FilterJobConfig, data)


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


def _budget_job(root: Path) -> JobAPI:
    """A job's budget (cap 1.0) kept under the output `root`, as the filter makes it."""
    from fsspec.implementations.local import LocalFileSystem

    api = {"base_url": "http://127.0.0.1:1/v1", "max_cost": 1.0, "api_key_env": None}
    return job_api(_job(engine="openai", model="m", api=api).judge, LocalFileSystem(), str(root))


def _restart(actor: Any) -> None:
    """Kill `actor` as a lost node would and wait until Ray has restarted it (a call the old
    process still answered would prove nothing)."""
    import ray

    def pid() -> int:
        return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))

    before = pid()
    ray.kill(actor, no_restart=False)
    while pid() == before:
        time.sleep(0.1)


def test_spending_outlives_a_restart_of_the_budget_actor(ray_session, tmp_path):
    """Ray restarts the actor when its node is lost: it goes on with what was spent and
    what is in flight (which settles on it), so the cap still holds."""
    import ray

    job = _budget_job(tmp_path)
    actor = job.budget
    assert ray.get(actor.reserve.remote(1, 0.4)) == 0.0
    ray.get(actor.settle.remote(0.4, 0.3))
    assert ray.get(actor.reserve.remote(1, 0.4)) == 0.0  # in flight when the actor goes
    _restart(actor)
    totals = ray.get(actor.totals.remote())
    assert totals["spent"] == pytest.approx(0.3) and totals["reserved"] == pytest.approx(0.4)
    assert ray.get(actor.reserve.remote(1, 0.4)) is None  # 0.3 + 0.4 + 0.4 would pass 1.0
    ray.get(actor.settle.remote(0.4, 0.2))  # the request in flight comes back
    assert ray.get(actor.reserve.remote(1, 0.4)) == 0.0  # 0.5 + 0.4: room again
    _restart(actor)
    totals = ray.get(actor.totals.remote())
    assert totals["spent"] == pytest.approx(0.5) and totals["refused"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [SPEND_FILE]  # no temp file left
    ray.kill(actor)


def test_a_resumed_run_starts_with_what_the_earlier_ones_spent(ray_session, tmp_path):
    """A new job on the same output (a resume) starts from the spending kept there; what was
    in flight when the earlier run died may have been billed, so it counts as spent."""
    import ray

    first = _budget_job(tmp_path).budget
    ray.get(first.reserve.remote(1, 0.4))
    ray.get(first.settle.remote(0.4, 0.3))
    ray.get(first.reserve.remote(1, 0.2))  # never settled: the run dies here
    ray.kill(first)
    again = _budget_job(tmp_path).budget
    totals = ray.get(again.totals.remote())
    assert totals["spent"] == pytest.approx(0.5) and totals["reserved"] == 0.0
    assert totals["refused"] == 0  # a new attempt's own count
    assert ray.get(again.reserve.remote(1, 0.6)) is None  # 0.5 + 0.6 would pass 1.0
    assert ray.get(again.reserve.remote(1, 0.5)) == 0.0
    ray.kill(again)
