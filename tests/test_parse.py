"""parse_score: the common ways judges write a 0-5 score, and everything it must refuse."""

import pytest

from alpagasus_ray.engines import parse_score

READABLE = [
    ("4.5", 4.5),
    ("4.5\n\nThe response is accurate but terse.", 4.5),
    ("5", 5.0),
    ("0", 0.0),
    ("Score: 4", 4.0),
    ("score: 3.5\nExplanation follows.", 3.5),
    ("**Score:** 3.5", 3.5),
    ("**4**\nGood answer.", 4.0),
    ("4/5", 4.0),
    ("3.5 / 5", 3.5),
    ("4 out of 5", 4.0),
    ("Rating: 2/5", 2.0),
    ("Rating: 4.5 out of 5", 4.5),
    ("I would rate this response a 4 because it is correct.", 4.0),
    ("The response deserves 4.5 points. It makes 3 small errors.", 4.5),
    ("The assistant answered 2 questions.\nScore: 3", 3.0),
    ("The score is 4.", 4.0),
    ("  \n2.0\n", 2.0),
    ("3 - partially correct, but the second step is wrong.", 3.0),
    ("4: accurate and complete.", 4.0),
    ("4.5 — good, with one small slip.", 4.5),
    ("2 – misses the question", 2.0),
    ("4/5 - clear", 4.0),
]

UNREADABLE = [
    "",
    "   ",
    "N/A",
    "The answer is good.",
    "4 5",  # two numbers on the score line: ambiguous
    "8/10",  # another scale: rescaling would be a guess
    "6",  # out of range
    "-1",
    "Score: 7",
    "1. The response is accurate",  # a list number, not a score
    "It mentions 3 facts and 2 dates.",
    "7 - excellent",  # the separated form refuses what the bare form refuses
    "-1: wrong",
    "12/10 - superb",
    "3-4 - mixed",  # a range, not a score
    "2 apples: the response lists them",  # no separator right after the number
]


@pytest.mark.parametrize(("text", "expected"), READABLE)
def test_reads_common_formats(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text", UNREADABLE)
def test_refuses_rather_than_guesses(text):
    assert parse_score(text) is None


def test_non_string_is_unreadable():
    assert parse_score(None) is None  # type: ignore[arg-type]
    assert parse_score(4) is None  # type: ignore[arg-type]
