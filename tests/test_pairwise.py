"""The pairwise judge's prompt, score parsing, both-orders rule and winning score."""

from __future__ import annotations

import pytest

from alpagasus_ray.evaluate.pairwise import (
    PAIR_CRITERIA,
    PAIR_SYSTEM_PROMPT,
    a_scores,
    combine,
    count_outcomes,
    flipped,
    pair_messages,
    parse_pair,
    verdict,
    winning_score,
)


def test_prompt_is_the_papers():
    msgs = pair_messages("Q?", "first", "second")
    assert msgs[0] == {
        "role": "system",
        "content": "You are a helpful and precise assistant for checking the quality of the "
        "answer.",
    }
    user = msgs[1]["content"]
    assert user.startswith("[Question]\nQ?\n\n[The Start of Assistant 1's Answer]\nfirst\n\n")
    assert (
        "[The Start of Assistant 2's Answer]\nsecond\n\n[The End of Assistant 2's Answer]" in user
    )
    assert user.endswith("[System]\n" + PAIR_CRITERIA + "\n\n")
    assert "on a scale of 1 to 10" in PAIR_CRITERIA
    assert "The two scores are separated by a space." in PAIR_CRITERIA
    assert msgs[0]["content"] == PAIR_SYSTEM_PROMPT


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8 7", (8.0, 7.0)),
        ("8, 7", (8.0, 7.0)),
        ("8,7\nAssistant 1 is more detailed.", (8.0, 7.0)),
        ("  9 9  \n\nBoth are equally good.", (9.0, 9.0)),
        ("8.5 7", (8.5, 7.0)),
        ("**8 7**", (8.0, 7.0)),
        ("8/10 6/10", (8.0, 6.0)),
        ("Assistant 1: 8\nAssistant 2: 7", (8.0, 7.0)),
        ("Scores:\nAssistant 1: 3\nAssistant 2: 10\nExplanation ...", (3.0, 10.0)),
        ("Assistant 1's score: 6. Assistant 2's score: 9.", (6.0, 9.0)),
    ],
)
def test_parse_pair_readable(text, expected):
    assert parse_pair(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        None,
        "Both answers are good.",
        "8",  # one score only
        "8 7 6",  # three values
        "Assistant 1: 8, and the other one is worse.",  # Assistant 2 never scored
        "11 7",  # out of range
        "I would give these 2023 points and 7 points",
        "the the the 8 7 9",
    ],
)
def test_parse_pair_unreadable(text):
    assert parse_pair(text) is None


def test_verdict_and_order():
    assert verdict(8, 7) == "win" and verdict(7, 8) == "lose" and verdict(7, 7) == "tie"
    # Order "ab": A is Assistant 1. Order "ba": A is Assistant 2.
    assert a_scores("ab", 8, 7) == (8, 7)
    assert a_scores("ba", 8, 7) == (7, 8)
    assert a_scores("ba", None, 7) is None


# (A's scores in order ab as (A, B), then in order ba as (A, B)) -> outcome for A, flipped
RULE_TABLE = [
    ((9, 7), (8, 6), "win", False),  # wins twice
    ((9, 7), (7, 7), "win", True),  # wins one, ties one
    ((5, 5), (8, 6), "win", True),  # ties one, wins one
    ((5, 5), (6, 6), "tie", False),  # ties twice
    ((9, 7), (6, 8), "tie", True),  # wins one, loses one (position bias)
    ((3, 7), (8, 2), "tie", True),  # loses one, wins one
    ((3, 7), (4, 4), "lose", True),  # loses one, ties one
    ((4, 4), (3, 7), "lose", True),
    ((3, 7), (2, 5), "lose", False),  # loses twice
]


@pytest.mark.parametrize("ab, ba, outcome, flip", RULE_TABLE)
def test_both_orders_rule(ab, ba, outcome, flip):
    # What the judge wrote: order ab shows (A, B); order ba shows (B, A).
    v_ab = verdict(*a_scores("ab", ab[0], ab[1]))
    v_ba = verdict(*a_scores("ba", ba[1], ba[0]))
    assert combine(v_ab, v_ba) == outcome
    assert flipped(v_ab, v_ba) is flip


def test_unreadable_is_never_a_tie():
    assert combine(None, "win") == "unparseable"
    assert combine("tie", None) == "unparseable"
    assert combine(None, None) == "unparseable"
    assert flipped("win", None) is None


def test_winning_score():
    outcomes = [o for *_, o, _ in RULE_TABLE] + ["unparseable"]
    counts = count_outcomes(outcomes)
    assert counts == {"win": 3, "tie": 3, "lose": 3, "unparseable": 1}
    assert winning_score(counts["win"], counts["lose"], 9) == pytest.approx(1.0)
    # (#win - #lose) / #judged + 1: all wins -> 2, all losses -> 0.
    assert winning_score(80, 0, 80) == 2.0
    assert winning_score(0, 80, 80) == 0.0
    assert winning_score(30, 10, 80) == pytest.approx(1.25)
    assert winning_score(0, 0, 0) is None
