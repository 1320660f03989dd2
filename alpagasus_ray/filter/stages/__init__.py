"""The filter's stages, one per file; each is a Ray Data `map_batches` callable on Arrow tables.

read (io.py) -> ValidateStage -> PromptStage -> ScoreStage -> DecideStage -> write (io.py)
"""

from alpagasus_ray.filter.stages.decide import DecideStage
from alpagasus_ray.filter.stages.prompt import PromptStage
from alpagasus_ray.filter.stages.score import ScoreStage
from alpagasus_ray.filter.stages.validate import ValidateStage

__all__ = ["DecideStage", "PromptStage", "ScoreStage", "ValidateStage"]
