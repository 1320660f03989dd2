"""`judge.criteria`: several rubrics judged for every row of one run, each on its own scale
with its own threshold, and `filter.rule` deciding the row from their scores.

A criterion's scores land in columns of their own (`criterion_columns`): `score_<name>`, and
`score_probs_<name>` (logprobs mode) or `judge_text_<name>` (generate mode). The row's own
`score` is the mean of its criteria's scores scaled to 0-1, what `filter.rule: mean` decides
on; `all` and `any` decide on each criterion's score against its threshold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from alpagasus_ray.core.strict import StrictModel
from alpagasus_ray.text.rubrics import PAPER_SCALE, Scale, check_rubric, is_paper

Rule = Literal["all", "any", "mean"]
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
RESERVED_NAMES = frozenset({"probs", "mass"})  # score_probs and score_mass are the row's own
RESERVED_START = "probs_"  # score_probs_<x> is criterion x's


class Criterion(StrictModel):
    """One criterion: a rubric (the paper's by name, or a template), its scale and where it
    passes."""

    rubric: str | None = Field(None, description="accuracy, helpfulness, or your template.")
    rubric_file: str | None = Field(
        None, description="Or your template in a file (local or s3://), read once at start."
    )
    scale: tuple[int, int] = Field(
        PAPER_SCALE, description="[lo, hi]: the whole scores its rubric asks for."
    )
    threshold: float | None = Field(
        None,
        description="Passes when its score >= threshold (rules all and any); default: "
        "filter.threshold.",
    )

    @field_validator("rubric")
    @classmethod
    def _check_rubric(cls, v: str | None) -> str | None:
        return None if v is None else check_rubric(v)

    @model_validator(mode="after")
    def _check_scale(self) -> Criterion:
        if (self.rubric is None) == (self.rubric_file is None):
            raise ValueError("give a criterion its rubric or its rubric_file: one of the two")
        lo, hi = self.scale
        if not 0 <= lo < hi:
            raise ValueError(f"scale {list(self.scale)} is not [lo, hi] with 0 <= lo < hi")
        if self.scale != PAPER_SCALE and not self.own_rubric():
            raise ValueError(f"scale {list(self.scale)} needs your own rubric: the paper's "
                             f"{self.rubric} rubric asks for a score from 0 to 5")  # fmt: skip
        if self.threshold is not None and not lo <= self.threshold <= hi:
            raise ValueError(f"threshold {self.threshold:g} is outside its scale [{lo}, {hi}]")
        return self

    def own_rubric(self) -> bool:
        """A user's template, given or to be read from `rubric_file` at start (as
        `JudgeConfig.own_rubric`)."""
        return self.rubric_file is not None or not is_paper(self.rubric)


def check_names(criteria: Mapping[str, Criterion]) -> None:
    """Names that make column names: lower-case words, not the row's own columns' endings."""
    for name in criteria:
        if not NAME.match(name) or name in RESERVED_NAMES or name.startswith(RESERVED_START):
            raise ValueError(
                f"judge.criteria: the name {name!r}: lower-case letters, digits and '_', "
                f"starting with a letter, at most 32 (it names the column score_{name}); not "
                + " or ".join(sorted(RESERVED_NAMES))
                + f", nor starting {RESERVED_START}"
            )


def scaled(score: float, scale: Scale) -> float:
    """A score on its scale as a share of the scale: lo -> 0, hi -> 1."""
    lo, hi = scale
    return (score - lo) / (hi - lo)


def span(scales: list[Scale]) -> Scale:
    """The scale an engine reads every criterion's scores from: the lowest lo to the
    highest hi."""
    return min(s[0] for s in scales), max(s[1] for s in scales)


def score_column(name: str) -> str:
    return f"score_{name}"


def criterion_columns(name: str, mode: str) -> dict[str, pa.DataType]:
    """A criterion's own output columns and their types."""
    detail = (
        (f"score_probs_{name}", pa.list_(pa.float32()))
        if mode == "logprobs"
        else (f"judge_text_{name}", pa.string())
    )
    return {score_column(name): pa.float64(), detail[0]: detail[1]}


def thresholds(criteria: Mapping[str, Criterion], threshold: float) -> dict[str, float]:
    """Each criterion's threshold: its own, or the filter's."""
    return {n: threshold if c.threshold is None else c.threshold for n, c in criteria.items()}


def check_thresholds(criteria: Mapping[str, Criterion], rule: Rule, threshold: float) -> None:
    """A ValueError, in one clause, where a threshold cannot be met or is not used."""
    if rule == "mean":
        if not 0 <= threshold <= 1:
            raise ValueError(f"filter.threshold {threshold:g} is outside [0, 1]: rule mean "
                             "decides on the mean of the criteria's scores scaled to "
                             "0-1")  # fmt: skip
        named = [n for n, c in criteria.items() if c.threshold is not None]
        if named:
            raise ValueError(f"judge.criteria.{named[0]}.threshold: rule mean decides on "
                             "filter.threshold alone; leave it unset, or take rule all or "
                             "any")  # fmt: skip
        return
    for name, value in thresholds(criteria, threshold).items():
        lo, hi = criteria[name].scale
        if not lo <= value <= hi:
            raise ValueError(f"filter.threshold {value:g} is outside the scale [{lo}, {hi}] of "
                             f"judge.criteria.{name}: give it a threshold of its own")  # fmt: skip
