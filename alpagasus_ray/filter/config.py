"""The filter job's config: where to read and write, the judge, and where to cut."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from alpagasus_ray.core.config import (
    InputConfig,
    JudgeConfig,
    OutputConfig,
    RayConfig,
    StorageConfig,
    StrictModel,
)
from alpagasus_ray.core.criteria import Rule, check_thresholds


class ThresholdConfig(StrictModel):
    """The `filter:` section: where the kept rows are cut from the rejected."""

    threshold: float = Field(
        4.5, description="Keep when score >= threshold; within judge.scale (the paper's: 0-5)."
    )
    keep_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Keep this share of the scored rows instead (e.g. 0.17, the paper's keep "
        "rate): the threshold becomes the matching score quantile, decided after judging.",
    )
    rule: Rule = Field(
        "all",
        description="judge.criteria: keep a row when all its criteria pass (each score >= "
        "its threshold), any passes, or the mean of its scores scaled to 0-1 >= threshold.",
    )


class ReportConfig(StrictModel):
    category_column: str | None = Field(
        None, description="Count decisions per value of this column; default: 'category' if any."
    )
    histogram_bins: int = Field(21, gt=1)
    examples: int = Field(
        3,
        ge=0,
        description="Rows to look at in the report: this many of each kind (highest, lowest, "
        "closest to the threshold, suspicious, each failure reason); 0: none.",
    )


class FilterJobConfig(StrictModel):
    """The filter job: read -> validate -> prompt -> score -> decide -> write."""

    input: InputConfig
    output: OutputConfig
    judge: JudgeConfig
    filter: ThresholdConfig = ThresholdConfig()
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _threshold_on_the_scale(self) -> FilterJobConfig:
        f = self.filter
        if not self.judge.criteria:
            if f.rule != "all":
                raise ValueError(f"filter.rule {f.rule} decides among judge.criteria: give "
                                 "criteria, or leave it unset")  # fmt: skip
        else:
            check_thresholds(self.judge.criteria, f.rule, f.threshold)
            if f.keep_fraction is not None and f.rule != "mean":
                raise ValueError(f"filter.keep_fraction ranks rows by one score: with rule "
                                 f"{f.rule} each criterion has its own; take rule "
                                 "mean")  # fmt: skip
            return self
        lo, hi = self.judge.scale
        if not lo <= self.filter.threshold <= hi:
            raise ValueError(f"filter.threshold {self.filter.threshold:g} is outside "
                             f"judge.scale [{lo}, {hi}]")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _rubric_fits_the_rows(self) -> FilterJobConfig:
        own = self.judge.own_rubric() or any(c.own_rubric() for c in self.judge.criteria.values())
        if self.input.columns.messages and own:
            raise ValueError(
                "judge.rubric: a custom template rates instruction rows; conversation rows "
                "(input.columns.messages) are rated with the paper's accuracy or helpfulness"
            )
        return self

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with secrets masked, safe for manifests and logs."""
        return self.model_dump(mode="json")
