"""The paper's pairwise judge: prompt, score parsing, and the both-orders win/tie/lose rule.

The system prompt, the prompt template and the criteria are the wording of the AlpaGasus
reference evaluation code (gpt4life/alpagasus, evaluation/eval.py), verbatim: a different
wording is a different judge, and the paper's numbers are only comparable under the same one.

The rule that turns the two orders into one outcome for model A (the paper, section 4.1):

| order A-first | order B-first | outcome for A |
|---|---|---|
| win  | win  | win  |
| win  | tie  | win  |
| tie  | win  | win  |
| tie  | tie  | tie  |
| win  | lose | tie  |
| lose | win  | tie  |
| lose | tie  | lose |
| tie  | lose | lose |
| lose | lose | lose |

i.e. the sum of the two verdicts (+1 win, 0 tie, -1 lose) decides by its sign. A question
whose judgement is unreadable (or failed) in either order is `unparseable`: it is counted
and shown on its own, never folded into the ties.

Winning score = (#win - #lose) / #judged + 1, in [0, 2]; 1 means parity. The paper divides
by the test set size; we divide by the questions judged in both orders (win + tie + lose),
which is the same number when nothing is unparseable and does not quietly count an
unreadable judgement as a tie when something is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from alpagasus_ray.engines.parse import strip_markup

PAIR_SYSTEM_PROMPT = (
    "You are a helpful and precise assistant for checking the quality of the answer."
)
PAIR_TEMPLATE = (
    "[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{answer_1}\n\n"
    "[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\n{answer_2}\n\n"
    "[The End of Assistant 2's Answer]\n\n[System]\n{criteria}\n\n"
)
PAIR_CRITERIA = (
    "We would like to request your feedback on the performance of two AI assistants in "
    "response to the user question displayed above.\nPlease rate the helpfulness, relevance, "
    "accuracy, level of details of their responses. Each assistant receives an overall score "
    "on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space. In the "
    "subsequent line, please provide a comprehensive explanation of your evaluation, avoiding "
    "any potential bias and ensuring that the order in which the responses were presented "
    "does not affect your judgment."
)

MIN_PAIR_SCORE, MAX_PAIR_SCORE = 0.0, 10.0  # the prompt says 1-10; a 0 is still a clear score

Verdict = Literal["win", "tie", "lose"]
OUTCOMES = ("win", "tie", "lose", "unparseable")
_VALUE = {"win": 1, "tie": 0, "lose": -1}


def pair_messages(question: str, answer_1: str, answer_2: str) -> list[dict[str, str]]:
    """Chat messages (system, user) asking the judge to score two answers to one question."""
    user = PAIR_TEMPLATE.format(
        question=question, answer_1=answer_1, answer_2=answer_2, criteria=PAIR_CRITERIA
    )
    return [{"role": "system", "content": PAIR_SYSTEM_PROMPT}, {"role": "user", "content": user}]


_NUM = r"(\d+(?:\.\d+)?)"
_OUT_OF_10 = r"(?:\s*/\s*10)?"
# "8 7", "8, 7", "8,7", "8 and 7", "8/10 7/10", "8 - 7"; nothing else on the line.
_PAIR_LINE = re.compile(
    rf"^\s*{_NUM}{_OUT_OF_10}\s*(?:,|;|\band\b|-|\s)\s*{_NUM}{_OUT_OF_10}\s*\.?\s*$", re.I
)
# "Assistant 1: 8" ... "Assistant 2: 7" anywhere (also "Assistant 1 score: 8", "Assistant 1 - 8").
_LABELLED = re.compile(
    rf"assistant\s*([12])\s*(?:'s)?\s*(?:score|rating)?\s*(?:is|:|=|-)?\s*{_NUM}{_OUT_OF_10}", re.I
)


def _in_range(*values: str) -> tuple[float, float] | None:
    a, b = (float(v) for v in values)
    ok = all(MIN_PAIR_SCORE <= v <= MAX_PAIR_SCORE for v in (a, b))
    return (a, b) if ok else None


def parse_pair(text: str | None) -> tuple[float, float] | None:
    """(score of Assistant 1, score of Assistant 2), or None when the text holds no clear pair.

    The first non-empty line in the asked-for form wins; otherwise both assistants must be
    labelled with a score somewhere ("Assistant 1: 8 ... Assistant 2: 7"). Anything else is
    unreadable: guessing a pair from stray numbers would invent verdicts.
    """
    clean = strip_markup(text)
    if not clean:
        return None
    first = clean.splitlines()[0]
    if m := _PAIR_LINE.match(first):
        return _in_range(m.group(1), m.group(2))
    found: dict[str, str] = {}
    for m in _LABELLED.finditer(clean):
        found.setdefault(m.group(1), m.group(2))
    if "1" in found and "2" in found:
        return _in_range(found["1"], found["2"])
    return None


def verdict(score_a: float, score_b: float) -> Verdict:
    """One order's verdict for model A from the two scores."""
    if score_a > score_b:
        return "win"
    return "lose" if score_a < score_b else "tie"


def a_scores(order: str, score_1: float | None, score_2: float | None) -> tuple | None:
    """(score of A, score of B) from a judgement in `order` ("ab": A was Assistant 1)."""
    if score_1 is None or score_2 is None:
        return None
    return (score_1, score_2) if order == "ab" else (score_2, score_1)


def combine(first: Verdict | None, second: Verdict | None) -> str:
    """The question's outcome for A from its two orders' verdicts (see the module table)."""
    if first is None or second is None:
        return "unparseable"
    total = _VALUE[first] + _VALUE[second]
    return "win" if total > 0 else "lose" if total < 0 else "tie"


def flipped(first: Verdict | None, second: Verdict | None) -> bool | None:
    """Position bias: did swapping the order change A's verdict? None when unreadable."""
    if first is None or second is None:
        return None
    return first != second


def count_outcomes(outcomes: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for o in outcomes:
        counts[o] += 1
    return counts


def winning_score(win: int, lose: int, judged: int) -> float | None:
    """(#win - #lose) / #judged + 1; None when nothing was judged."""
    return (win - lose) / judged + 1 if judged else None
