"""Judge outputs -> judgements (shared by every engine), and the HF engine itself."""

import math

import pyarrow as pa
import pytest

from alpagasus_ray.core.config import SCORE_LINE_TOKENS, JudgeConfig
from alpagasus_ray.data.schema import Reason
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.engines import JudgeOutput, judge_output_to_judgement, score_token_ids
from alpagasus_ray.engines.hf import HFEngine
from alpagasus_ray.filter.stages.decide import DecideStage
from alpagasus_ray.text.models import load_tokenizer
from alpagasus_ray.text.prompts import rating_prompt_ids

TOKENS = {10: 0, 11: 1, 12: 2, 13: 3, 14: 4, 15: 5, 24: 4}  # 24: " 4", another spelling of 4


def test_expected_score_from_logprobs():
    out = JudgeOutput(logprobs={14: math.log(0.6), 15: math.log(0.2), 99: math.log(0.2)})
    j = judge_output_to_judgement(out, "logprobs", TOKENS, min_score_mass=0.5)
    assert j.reason is None
    assert j.mass == pytest.approx(0.8)
    assert j.probs == pytest.approx([0, 0, 0, 0, 0.75, 0.25])
    assert j.score == pytest.approx(4.25)


def test_both_spellings_of_a_digit_add_up():
    out = JudgeOutput(logprobs={14: math.log(0.3), 24: math.log(0.3), 15: math.log(0.4)})
    j = judge_output_to_judgement(out, "logprobs", TOKENS, 0.0)
    assert j.probs[4] == pytest.approx(0.6)
    assert j.score == pytest.approx(4.4)


def test_low_mass_fails_the_row_with_a_reason():
    out = JudgeOutput(logprobs={14: math.log(0.1), 99: math.log(0.9)})
    j = judge_output_to_judgement(out, "logprobs", TOKENS, min_score_mass=0.5)
    assert j.score is None and j.reason == Reason.LOW_SCORE_MASS.value
    none = judge_output_to_judgement(JudgeOutput(logprobs={99: 0.0}), "logprobs", TOKENS, 0.0)
    assert none.reason == Reason.LOW_SCORE_MASS.value


def test_generate_mode_parses_or_fails_keeping_the_text():
    ok = judge_output_to_judgement(JudgeOutput(text="4.5\nGood."), "generate", TOKENS, 0.5)
    assert ok.score == 4.5 and ok.text == "4.5\nGood."
    bad = judge_output_to_judgement(JudgeOutput(text="Lovely!"), "generate", TOKENS, 0.5)
    assert bad.score is None and bad.reason == Reason.UNPARSEABLE_JUDGEMENT.value
    assert bad.text == "Lovely!"


def test_engine_error_is_a_row_failure():
    j = judge_output_to_judgement(JudgeOutput(error="CUDA OOM"), "logprobs", TOKENS, 0.5)
    assert j.reason == Reason.ENGINE_ERROR.value and j.detail == "CUDA OOM"


def test_decision_rule():
    table = pa.table({"score": pa.array([4.5, 4.4999, None], pa.float64())})
    decided = DecideStage(4.5)(table).to_pylist()
    assert [r["decision"] for r in decided] == ["kept", "rejected", "failed"]
    assert decided[2]["reason"] == "not_scored"


def test_score_tokens_of_a_real_tokenizer(tiny_judge):
    tok = load_tokenizer(str(tiny_judge))
    ids = score_token_ids(tok)
    assert set(ids.values()) == set(range(6))
    for token_id, digit in ids.items():
        assert tok.decode([token_id]).strip() == str(digit)


@pytest.fixture(scope="module")
def prompts(tiny_judge):
    tok = load_tokenizer(str(tiny_judge))
    return rating_prompt_ids(tok, synthetic_examples(12, seed=7), "accuracy", "prefix")


def test_hf_batched_equals_one_at_a_time(tiny_judge, prompts):
    engine = HFEngine(JudgeConfig(model=str(tiny_judge), micro_batch_size=5))
    batched = engine.judge(prompts)
    single = [engine.judge([p])[0] for p in prompts]
    assert len(batched) == len(prompts)
    for b, s in zip(batched, single, strict=True):
        assert b.logprobs.keys() == s.logprobs.keys()
        for k in b.logprobs:
            assert b.logprobs[k] == pytest.approx(s.logprobs[k], abs=1e-4)
    # Different prompts get different judgements: outputs are not shuffled or shared.
    assert len({round(o.logprobs[min(o.logprobs)], 4) for o in batched}) > 1


def test_hf_generate_mode(tiny_judge, prompts):
    cfg = JudgeConfig(model=str(tiny_judge), mode="generate", max_new_tokens=6)
    outs = HFEngine(cfg).judge(prompts[:3])
    assert all(isinstance(o.text, str) and 0 < o.num_output_tokens <= 6 for o in outs)
    assert all(o.logprobs is None and o.error is None for o in outs)


def test_generate_mode_can_stop_at_the_end_of_the_score_line(tiny_judge, prompts):
    """Greedy decoding, so the stopped answer is the full one's first line (or its first
    SCORE_LINE_TOKENS tokens when that line is longer), and costs only its own tokens."""
    cfg = {"model": str(tiny_judge), "mode": "generate", "max_new_tokens": 40}
    full = HFEngine(JudgeConfig(**cfg)).judge(prompts)
    short = HFEngine(JudgeConfig(**cfg, stop_after_score_line=True)).judge(prompts)
    stopped = 0
    for f, s in zip(full, short, strict=True):
        assert "\n" not in s.text and f.text.startswith(s.text.rstrip("\ufffd"))
        assert s.num_output_tokens <= min(SCORE_LINE_TOKENS, f.num_output_tokens)
        if s.num_output_tokens < SCORE_LINE_TOKENS:  # it stopped at the line's end
            assert s.text == f.text.split("\n")[0]
            stopped += 1
    assert stopped >= 3  # the tiny judge writes a line break early in several of them


def test_hf_isolates_a_row_that_breaks(tiny_judge, prompts):
    engine = HFEngine(JudgeConfig(model=str(tiny_judge)))
    bad = [10**9]  # a token id outside the vocabulary
    outs = engine.judge([prompts[0], bad, prompts[1]])
    assert outs[0].error is None and outs[2].error is None
    assert outs[1].error and outs[1].logprobs is None
