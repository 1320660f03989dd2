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
from alpagasus_ray.text.rubrics import PAPER_SCALE, Scale, scale_scores


@dataclass
class Judgement:
    score: float | None = None
    probs: list[float] | None = None  # P(score) per score of the scale, over its tokens
    mass: float | None = None  # probability the judge put on the score tokens at all
    text: str | None = None
    reason: str | None = None  # set when the row failed
    detail: str | None = None


def score_token_ids(tokenizer: Any, scale: Scale = PAPER_SCALE) -> dict[int, int]:
    """Token ids that spell a bare score of the scale, with and without a leading space.

    A judge may start its answer with "4" or " 4" depending on the tokenizer; summing over
    both spellings keeps the distribution honest for either. A score with no token of its
    own cannot be read from one position's probabilities: a ValueError names it.
    """
    ids: dict[int, int] = {}
    unknown = getattr(tokenizer, "unk_token_id", None)  # spells no score: any unknown word
    for score in scale_scores(scale):
        for spelling in (str(score), f" {score}"):
            toks = tokenizer.encode(spelling, add_special_tokens=False)
            if unknown is not None and unknown in toks:
                continue
            if len(toks) == 1:
                ids.setdefault(toks[0], score)
            elif len(toks) == 2 and tokenizer.decode(toks[:1]).strip() == "":
                ids.setdefault(toks[1], score)  # sentencepiece: "▁" + "4"
        if score not in ids.values():
            raise ValueError(
                f"judge.scale {list(scale)}: the judge tokenizer has no single token for the "
                f"score {score}, so logprobs mode cannot read its probability (scales within "
                "0-9 usually work, 1-10 usually does not); take such a scale, or mode: generate"
            )
    return ids


def judge_output_to_judgement(
    out: JudgeOutput,
    mode: str,
    score_tokens: dict[int, int],
    min_score_mass: float,
    scale: Scale = PAPER_SCALE,
) -> Judgement:
    if out.error:
        return Judgement(text=out.text, reason=Reason.ENGINE_ERROR.value, detail=out.error)
    if mode == "logprobs":
        return _from_logprobs(out.logprobs or {}, score_tokens, min_score_mass, scale)
    score = parse_score(out.text or "", scale)
    if score is None:
        return Judgement(
            text=out.text,
            reason=Reason.UNPARSEABLE_JUDGEMENT.value,
            detail=f"no {scale[0]}-{scale[1]} score found in the judge's text",
        )
    return Judgement(score=score, text=out.text)


def judgement_fields(
    out: JudgeOutput,
    mode: str,
    score_tokens: dict[int, int],
    min_score_mass: float,
    scale: Scale = PAPER_SCALE,
) -> dict[str, Any]:
    """One judged row's output columns, for every engine (HF stage and vLLM postprocess).

    A failed judgement also sets the row's decision and reason here, so that no engine has
    its own idea of what a failure looks like.
    """
    j = judge_output_to_judgement(out, mode, score_tokens, min_score_mass, scale)
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
    logprobs: dict[int, float], score_tokens: dict[int, int], min_mass: float, scale: Scale
) -> Judgement:
    """The expected score over `scale`'s tokens. An engine serving several criteria reads
    the tokens of all their scales (`judge.criteria`); only this scale's count here."""
    scores = scale_scores(scale)
    probs = [0.0] * len(scores)
    for token_id, lp in logprobs.items():
        score = score_tokens.get(int(token_id))
        on_scale = score is not None and scale[0] <= score <= scale[1]
        if on_scale and lp is not None and lp > -math.inf:
            probs[score - scale[0]] += math.exp(lp)
    mass = sum(probs)
    if mass <= 0.0 or mass < min_mass:
        return Judgement(
            mass=mass,
            reason=Reason.LOW_SCORE_MASS.value,
            detail=f"P(score token) = {mass:.4f} < min_score_mass {min_mass}",
        )
    probs = [p / mass for p in probs]
    expected = sum(s * p for s, p in zip(scores, probs, strict=True))
    return Judgement(score=round(expected, 6), probs=probs, mass=mass)
