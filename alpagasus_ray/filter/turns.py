"""`judge.turns: each`: the judgements of a conversation's turns folded back into its row's
own.

Every engine path folds with `combine`: the actor-pool engines inside one batch
(`stages/score.py`), vLLM after its turn rows come back (`stages/vllm_turns.py`); the
score stage and the dry run find a row's prompts with `stages.common.row_prompts`.
"""

from __future__ import annotations

from typing import Any

from alpagasus_ray.data.schema import (
    DECISION,
    NUM_OUTPUT_TOKENS,
    NUM_PROMPT_TOKENS,
    REASON_DETAIL,
    SCORE,
    TURN_SCORES,
    Decision,
)


def combine(turns: list[dict[str, Any]], how: str) -> dict[str, Any]:
    """One row's judgement from its turns' (each `engines.judgement_fields`, in turn order).

    A failed turn fails the row, with its reason and the turn named: a conversation whose
    answers were not all rated has no score. Otherwise the score is the `min` or the `mean`
    of the turns' scores, with the probabilities, mass and text of the lowest-scored turn
    (the one that decides a `min` row); the output tokens are summed, and so are the prompt
    tokens where the engine counted them.
    """
    scores = [t.get(SCORE) for t in turns]
    counted = [t.get(NUM_PROMPT_TOKENS) for t in turns]
    totals: dict[str, Any] = {
        TURN_SCORES: scores,
        NUM_OUTPUT_TOKENS: sum(t.get(NUM_OUTPUT_TOKENS) or 0 for t in turns),
    }
    if all(c is not None for c in counted):
        totals[NUM_PROMPT_TOKENS] = sum(counted)
    for k, turn in enumerate(turns):
        if turn.get(DECISION) == Decision.FAILED.value:
            detail = f"judged turn {k + 1} of {len(turns)}: {turn.get(REASON_DETAIL)}"
            return {**turn, **totals, REASON_DETAIL: detail}
    worst = min(range(len(turns)), key=lambda k: scores[k])
    score = min(scores) if how == "min" else round(sum(scores) / len(scores), 6)
    return {**turns[worst], **totals, SCORE: score}
