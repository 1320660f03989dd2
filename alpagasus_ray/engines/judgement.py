"""Raw judge output -> score, distribution and failure reason. Shared by every engine."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from alpagasus_ray.data.schema import (
    DECISION,
    JUDGE_TEXT,
    NUM_OUTPUT_TOKENS,
    REASON,
    REASON_DETAIL,
    SCORE,
    SCORE_MASS,
    SCORE_PROBS,
    Decision,
    Reason,
)
from alpagasus_ray.engines.base import JudgeOutput
from alpagasus_ray.engines.parse import parse_score

SCORE_DIGITS = tuple(range(6))


@dataclass
class Judgement:
    score: float | None = None
    probs: list[float] | None = None  # P(score = 0..5), renormalised over the score tokens
    mass: float | None = None  # probability the judge put on the score tokens at all
    text: str | None = None
    reason: str | None = None  # set when the row failed
    detail: str | None = None


def score_token_ids(tokenizer: Any) -> dict[int, int]:
    """Token ids that spell a bare score digit, with and without a leading space.

    A judge may start its answer with "4" or " 4" depending on the tokenizer; summing over
    both spellings keeps the distribution honest for either.
    """
    ids: dict[int, int] = {}
    for digit in SCORE_DIGITS:
        for spelling in (str(digit), f" {digit}"):
            toks = tokenizer.encode(spelling, add_special_tokens=False)
            if len(toks) == 1:
                ids.setdefault(toks[0], digit)
            elif len(toks) == 2 and tokenizer.decode(toks[:1]).strip() == "":
                ids.setdefault(toks[1], digit)  # sentencepiece: "▁" + "4"
    missing = set(SCORE_DIGITS) - set(ids.values())
    if missing:
        raise ValueError(f"the judge tokenizer has no single token for score digits {missing}")
    return ids


def judge_output_to_judgement(
    out: JudgeOutput, mode: str, score_tokens: dict[int, int], min_score_mass: float
) -> Judgement:
    if out.error:
        return Judgement(text=out.text, reason=Reason.ENGINE_ERROR.value, detail=out.error)
    if mode == "logprobs":
        return _from_logprobs(out.logprobs or {}, score_tokens, min_score_mass)
    score = parse_score(out.text or "")
    if score is None:
        return Judgement(
            text=out.text,
            reason=Reason.UNPARSEABLE_JUDGEMENT.value,
            detail="no 0-5 score found in the judge's text",
        )
    return Judgement(score=score, text=out.text)


def judgement_fields(
    out: JudgeOutput, mode: str, score_tokens: dict[int, int], min_score_mass: float
) -> dict[str, Any]:
    """One judged row's output columns, for every engine (HF stage and vLLM postprocess).

    A failed judgement also sets the row's decision and reason here, so that no engine has
    its own idea of what a failure looks like.
    """
    j = judge_output_to_judgement(out, mode, score_tokens, min_score_mass)
    fields: dict[str, Any] = {
        SCORE: j.score,
        SCORE_PROBS: j.probs,
        SCORE_MASS: j.mass,
        JUDGE_TEXT: j.text,
        NUM_OUTPUT_TOKENS: out.num_output_tokens,
    }
    if j.reason:
        fields.update({DECISION: Decision.FAILED.value, REASON: j.reason, REASON_DETAIL: j.detail})
    return fields


def _from_logprobs(
    logprobs: dict[int, float], score_tokens: dict[int, int], min_mass: float
) -> Judgement:
    probs = [0.0] * len(SCORE_DIGITS)
    for token_id, lp in logprobs.items():
        digit = score_tokens.get(int(token_id))
        if digit is not None and lp is not None and lp > -math.inf:
            probs[digit] += math.exp(lp)
    mass = sum(probs)
    if mass <= 0.0 or mass < min_mass:
        return Judgement(
            mass=mass,
            reason=Reason.LOW_SCORE_MASS.value,
            detail=f"P(score token) = {mass:.4f} < min_score_mass {min_mass}",
        )
    probs = [p / mass for p in probs]
    expected = sum(d * p for d, p in zip(SCORE_DIGITS, probs, strict=True))
    return Judgement(score=round(expected, 6), probs=probs, mass=mass)
