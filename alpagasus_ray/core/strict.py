"""The base of every config section, and the error a bad config is said with."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration problem, reported with the dotted key that caused it."""


class StrictModel(BaseModel):
    # A NaN or infinity is never a setting: refused as not a number, not compared with bounds.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
