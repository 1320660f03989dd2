"""`judge.criteria` row by row: the judgements of a row's criteria folded into its columns,
and the row's decision under `filter.rule`.

Every engine path folds with `fold_criteria`, as `judge.turns: each` folds with
`turns.combine`: the actor-pool engines inside one batch (`stages/score.py`), vLLM after a
row's criterion rows come back (`stages/vllm_turns.py`).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.core.criteria import (
    Rule,
    criterion_columns,
    scaled,
    score_column,
    thresholds,
)
from alpagasus_ray.data.schema import (
    DECISION,
    JUDGE_TEXT,
    NUM_OUTPUT_TOKENS,
    NUM_PROMPT_TOKENS,
    REASON_DETAIL,
    SCORE,
    SCORE_PROBS,
    Decision,
)
from alpagasus_ray.text.prompts import prompt_hash


def fold_criteria(judged: list[dict[str, Any]], judge: JudgeConfig) -> dict[str, Any]:
    """One row's columns from its criteria's judgements (each `engines.judgement_fields`,
    in `judge.criteria`'s order).

    Each criterion's score goes to `score_<name>`, with its probabilities (logprobs mode)
    or its text (generate mode). A failed criterion fails the row, naming the criterion,
    and the others' scores stay. Otherwise the row's `score` is the mean of the scores
    scaled to 0-1. Output tokens are summed, and so are prompt tokens where counted.
    """
    out: dict[str, Any] = {NUM_OUTPUT_TOKENS: sum(j.get(NUM_OUTPUT_TOKENS) or 0 for j in judged)}
    counted = [j.get(NUM_PROMPT_TOKENS) for j in judged]
    if all(c is not None for c in counted):
        out[NUM_PROMPT_TOKENS] = sum(counted)
    failed = None
    shares = []
    for (name, criterion), fields in zip(judge.criteria.items(), judged, strict=True):
        score_name, detail_name = criterion_columns(name, judge.mode)
        out[score_name] = fields.get(SCORE)
        out[detail_name] = fields.get(SCORE_PROBS if judge.mode == "logprobs" else JUDGE_TEXT)
        if fields.get(DECISION) == Decision.FAILED.value:
            failed = failed or (name, fields)
        else:
            shares.append(scaled(fields[SCORE], criterion.scale))
    if failed is not None:
        name, fields = failed
        detail = f"criterion {name}: {fields.get(REASON_DETAIL)}"
        return {**fields, **out, SCORE: None, SCORE_PROBS: None, REASON_DETAIL: detail}
    return {**out, SCORE: round(sum(shares) / len(shares), 6)}


def kept_mask(
    table: pa.Table, threshold: float, judge: JudgeConfig | None = None, rule: Rule = "all"
) -> pa.ChunkedArray:
    """The one place scores become decisions: for each row whether it is kept (null where
    it has no score). One score: `score >= threshold`; with criteria, all (or any) of their
    scores at or above their thresholds (their own, or `threshold`), or under `mean` the
    row's score, the mean of the scaled scores, at or above `threshold`."""
    if judge is None or not judge.criteria or rule == "mean":
        return pc.greater_equal(table.column(SCORE), threshold)
    limits = thresholds(judge.criteria, threshold)
    met = [pc.greater_equal(table.column(score_column(n)), t) for n, t in limits.items()]
    return functools.reduce(pc.and_kleene if rule == "all" else pc.or_kleene, met)


def criteria_types(judge: JudgeConfig) -> dict[str, pa.DataType]:
    """Every criterion column of a run and its type, so that a batch of all failures (all
    nulls) writes the same types as any other."""
    types: dict[str, pa.DataType] = {}
    for name in judge.criteria:
        types.update(criterion_columns(name, judge.mode))
    return types


def prompt_identity(judge: JudgeConfig) -> str:
    """What identifies a run's prompts: its rubric's wording in its layout, or with
    criteria every criterion's, by name."""
    if not judge.criteria:
        return prompt_hash(judge.rubric, judge.layout)
    parts = [f"{n}={prompt_hash(j.rubric, j.layout)}" for n, j in judge.criterion_judges().items()]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:16]
