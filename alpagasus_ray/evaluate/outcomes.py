"""Judgements -> outcomes: the judge's text parsed into two scores per judgement, then both
orders of each question combined into one outcome for model A by the rule in `pairwise.py`,
with the checks that every question was judged exactly once in each order."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from alpagasus_ray.evaluate.columns import (
    GEN_ERROR,
    GEN_TEXT,
    GEN_TOKENS,
    PROMPT_IDS,
    PROMPT_TOKENS,
)
from alpagasus_ray.evaluate.pairwise import a_scores, combine, flipped, parse_pair, verdict

OUTCOME_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("test_set", "question_id", "model_a", "model_b")]
    + [(c, pa.float64()) for c in ("score_a_ab", "score_b_ab", "score_a_ba", "score_b_ba")]
    + [(c, pa.string()) for c in ("status_ab", "status_ba", "verdict_ab", "verdict_ba")]
    + [("outcome", pa.string()), ("flipped", pa.bool_())]
)


def finish_judgments(table: pa.Table) -> pa.Table:
    """Parsed scores next to the raw text; status ok / unparseable / error, never a guess."""
    texts = table.column(GEN_TEXT).to_pylist()
    errors = table.column(GEN_ERROR).to_pylist()
    s1: list[float | None] = []
    s2: list[float | None] = []
    status: list[str] = []
    for text, err in zip(texts, errors, strict=True):
        pair = None if err else parse_pair(text)
        s1.append(pair[0] if pair else None)
        s2.append(pair[1] if pair else None)
        status.append("error" if err else "ok" if pair else "unparseable")
    return (
        table.drop_columns([PROMPT_IDS, GEN_TEXT, GEN_TOKENS, GEN_ERROR, PROMPT_TOKENS])
        .append_column("judge_text", pa.array(texts, pa.string()))
        .append_column("score_1", pa.array(s1, pa.float64()))
        .append_column("score_2", pa.array(s2, pa.float64()))
        .append_column("status", pa.array(status, pa.string()))
        .append_column("error", pa.array(errors, pa.string()))
        .append_column("num_prompt_tokens", table.column(PROMPT_TOKENS))
        .append_column("num_output_tokens", table.column(GEN_TOKENS))
    )


def combine_judgments(
    judgments: pa.Table, pairs: list[tuple[str, str]], n_questions: int
) -> tuple[pa.Table, dict[str, Any]]:
    """One row per (test set, question, pair) with both orders' scores and the outcome for A,
    plus the checks that every question was judged exactly once in each order."""
    groups: dict[tuple, dict[str, dict]] = {}
    dup = 0
    for r in judgments.to_pylist():
        key = (r["test_set"], r["question_id"], r["model_a"], r["model_b"])
        slot = groups.setdefault(key, {})
        dup += r["order"] in slot
        slot[r["order"]] = r
    rows = []
    for (ts, qid, a, b), orders in sorted(groups.items()):
        verdicts, scores, statuses = {}, {}, {}
        for order in ("ab", "ba"):
            r = orders.get(order)
            statuses[order] = r["status"] if r else "missing"
            s = a_scores(order, r["score_1"], r["score_2"]) if r else None
            scores[order] = s or (None, None)
            verdicts[order] = verdict(*s) if s else None
        rows.append(
            {
                "test_set": ts,
                "question_id": qid,
                "model_a": a,
                "model_b": b,
                "score_a_ab": scores["ab"][0],
                "score_b_ab": scores["ab"][1],
                "score_a_ba": scores["ba"][0],
                "score_b_ba": scores["ba"][1],
                "status_ab": statuses["ab"],
                "status_ba": statuses["ba"],
                "verdict_ab": verdicts["ab"],
                "verdict_ba": verdicts["ba"],
                "outcome": combine(verdicts["ab"], verdicts["ba"]),
                "flipped": flipped(verdicts["ab"], verdicts["ba"]),
            }
        )
    complete = sum(1 for o in groups.values() if set(o) == {"ab", "ba"})
    expected = n_questions * len(pairs)
    checks = {
        "expected_question_pairs": expected,
        "question_pairs": len(groups),
        "judged_in_both_orders": complete,
        "duplicate_judgments": dup,
        "ok": len(groups) == complete == expected and dup == 0,
    }
    return pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA), checks
