"""The judge's rubric: one of the paper's two, word for word, or a user's own template.

A template is the judge's user turn with the row's fields where they go: `{instruction}`,
`{input}` and `{output}` (the answer being rated, the one field a template must have);
`{{` and `}}` are literal braces, as in Python's `str.format`. In the `paper` layout it is
filled in as written. In the `prefix` layout the text before the first field stays first
(the head every row shares in a prefix cache), and the row, from its first field to its
last, is fenced as data like the paper rubric's example (`prompts.PREFIX_TRIPLET`). In the
`row_first` layout the fenced example comes first, as for the paper's rubrics, and the
template follows with each field pointing back to it (`refer_template`).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from functools import lru_cache

PAPER_RUBRICS = ("accuracy", "helpfulness")  # their texts: prompts.RATING_PROMPTS
Scale = tuple[int, int]  # the lowest and the highest score a rubric asks for
PAPER_SCALE: Scale = (0, 5)
FIELDS = ("instruction", "input", "output")
ANSWER_FIELD = "output"

Parts = tuple[tuple[str, str | None], ...]  # (literal text, the field after it or None)


def is_paper(rubric: str) -> bool:
    return rubric in PAPER_RUBRICS


def scale_scores(scale: Scale) -> range:
    """Every score of a scale, lowest first."""
    return range(scale[0], scale[1] + 1)


@lru_cache(maxsize=16)
def template_parts(template: str) -> Parts:
    """The template as literal text and fields; a ValueError names its first problem.
    Parsed once per template and process, not once per row (`fill_template`)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        raise ValueError(
            "the template has a lone '{' or '}' (write '{{' or '}}' for a literal brace)"
        ) from None
    parts: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and field not in FIELDS:
            named = f"{{{field}}}" if field else "a bare {}"
            raise ValueError(
                f"the template has an unknown field {named} (a template's fields: "
                + ", ".join(f"{{{f}}}" for f in FIELDS)
                + "; '{{' and '}}' for a literal brace)"
            )
        if spec or conversion:
            raise ValueError(
                f"the template formats its field {{{field}}}: a field takes no '!' or ':'"
            )
        parts.append((literal, field))
    return tuple(parts)


def check_rubric(rubric: str) -> str:
    """`rubric` itself when it is a paper rubric's name or a usable template; else a
    ValueError in one clause (a misspelt name reads as a template without fields)."""
    if is_paper(rubric):
        return rubric
    if not rubric.strip():
        raise ValueError(
            "the rubric is empty: name the paper's (accuracy, helpfulness) or write yours"
        )
    fields = {field for _, field in template_parts(rubric)}
    if ANSWER_FIELD not in fields:
        shown = rubric if len(rubric) <= 40 else rubric[:37] + "..."
        raise ValueError(
            f"{shown!r} is neither the paper's rubric (accuracy, helpfulness) nor a template "
            f"with an {{{ANSWER_FIELD}}} field: the judge would not see the answer it rates"
        )
    return rubric


def rubric_label(rubric: str) -> str:
    """How manifests, reports and refusals name a rubric: the paper's by name, a template by
    the hash of its text (the text itself is in the run's config)."""
    if is_paper(rubric):
        return rubric
    return "custom sha256:" + hashlib.sha256(rubric.encode("utf-8")).hexdigest()[:16]


def fill_template(
    template: str, values: Mapping[str, str], fence: tuple[str, str, str] | None = None
) -> str:
    """The template with the row's values; with `fence` (note, open, close), the text up to
    the first field, the note, then the row from its first field to its last between the
    open and close tags, then the rest."""
    parts = template_parts(template)
    pieces = [(literal, values[field] if field else "") for literal, field in parts]
    if fence is None:
        return "".join(literal + value for literal, value in pieces)
    at = [i for i, (_, field) in enumerate(parts) if field]
    first, last = at[0], at[-1]
    head = pieces[first][0]
    row = pieces[first][1] + "".join(lit + val for lit, val in pieces[first + 1 : last + 1])
    tail = "".join(lit + val for lit, val in pieces[last + 1 :])
    note, open_tag, close_tag = fence
    return f"{head}{note}{open_tag}\n{row}\n{close_tag}{tail}"


REFERENCES = {"instruction": "instruction", "input": "input", "output": "response"}


def refer_template(template: str) -> str:
    """The template with each field replaced by a pointer to the example above it: the
    rubric of the `row_first` layout, where the row is written once, before every rubric."""
    parts = template_parts(template)
    return "".join(
        literal + (f"[the {REFERENCES[field]} in the example above]" if field else "")
        for literal, field in parts
    )
