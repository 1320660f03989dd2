"""Read a score on the rubric's scale (the paper's: 0-5) from a judge's free text
(generate mode).

The paper's prompt asks for the score alone on the first line, but judges wander:
"Score: 4", "**Score:** 3.5", "4/5", "4 - accurate but terse", "I would rate it a 4 ...".
We accept those and return None for anything else, so that an unreadable judgement is a
failed row with its text kept, never a silently invented default.
"""

from __future__ import annotations

import re

from alpagasus_ray.text.rubrics import PAPER_SCALE, Scale

_NUM = r"(-?\d+(?:\.\d+)?)"
_OUT_OF = rf"\s*(?:/|out\s+of)\s*{_NUM}"
_BARE_LINE = re.compile(rf"^\s*{_NUM}(?:{_OUT_OF})?\s*(?:points?)?\s*[.!]?\s*$", re.I)
# "3 - partially correct", "4: accurate", "4.5 — good": the score, a separator, a reason.
# Not "1. The response" (a list number) nor "3-4 - mixed" (a range).
_LEADING = re.compile(rf"^\s*{_NUM}(?:{_OUT_OF})?\s*[-–—:]\s+\S")
_LABELLED = re.compile(
    rf"\b(?:score|rating|rated|rate|grade)\b\s*(?:is|of|would be|:|=|-)?\s*(?:an?\s+)?{_NUM}"
    rf"(?:{_OUT_OF})?",
    re.I,
)
_FRACTION = re.compile(rf"(?<![\d.]){_NUM}{_OUT_OF}", re.I)
_CONTEXT = re.compile(r"\b(?:rate|rating|score|give|deserves?|points?|award)\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
_NUMBERS = re.compile(rf"(?<![\w.]){_NUM}(?![\w]|\.\d)")


def _in_range(value: str, denominator: str | None, scale: Scale) -> float | None:
    lo, hi = scale
    score = float(value)
    if denominator is not None and float(denominator) != hi:
        return None  # "8/10" on a 0-5 scale is another scale; rescaling would be a guess.
    return score if lo <= score <= hi else None


def strip_markup(text: object) -> str:
    """A judge's text without Markdown emphasis and headings ("**Score:** 4" -> "Score: 4");
    empty for anything that is not text."""
    return re.sub(r"[*_`#]+", "", text).strip() if isinstance(text, str) else ""


def parse_score(text: str, scale: Scale = PAPER_SCALE) -> float | None:
    """The judge's score, or None when the text holds no unambiguous score in `scale`."""
    clean = strip_markup(text)
    if not clean:
        return None

    first_line = clean.splitlines()[0]
    if m := _BARE_LINE.match(first_line):
        return _in_range(m.group(1), m.group(2), scale)
    if m := _LEADING.match(first_line):
        return _in_range(m.group(1), m.group(2), scale)

    if m := _LABELLED.search(clean):
        return _in_range(m.group(1), m.group(2), scale)

    first_sentence = _SENTENCE_END.split(clean, maxsplit=1)[0]
    if m := _FRACTION.search(first_sentence):
        return _in_range(m.group(1), m.group(2), scale)
    numbers = _NUMBERS.findall(first_sentence)
    if len(numbers) == 1 and _CONTEXT.search(first_sentence):
        return _in_range(numbers[0], None, scale)
    return None


def score_line_regex(scale: Scale = PAPER_SCALE) -> str:
    """An answer that starts with a score on the scale ("4", "4.5"; the top score bare or
    ".0"), then a line break and anything, or nothing: what structured outputs hold a
    judge's decoding to, so that `parse_score` reads every answer."""
    lo, hi = scale
    below = "|".join(rf"{s}(\.[0-9])?" for s in range(hi - 1, lo - 1, -1))
    return rf"({hi}(\.0)?|{below})(\n[\s\S]*)?"
