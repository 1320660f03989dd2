"""The filter's stages, one per file; each is a Ray Data `map_batches` callable on Arrow tables.

    read (io.py)
    -> SkipDoneStage (skip_done.py: a resumed run's rows already written)
    -> ValidateStage -> DedupStage (filter/duplicates.py: exact copies judged once)
    -> PromptStage
    -> ScoreStage (hf, openai) | VLLMRequestStage -> Ray's vLLM engine stage ->
       VLLMResultStage (vllm_score.py)
    -> DecideStage
    -> write (filter/pipeline.py)

`filter/judge.py` chains validate to decide (the library entry point, `judge_dataset`);
`filter/pipeline.py` adds the read, the skip and the write around it.
"""

from alpagasus_ray.filter.stages.decide import DecideStage
from alpagasus_ray.filter.stages.prompt import PromptStage
from alpagasus_ray.filter.stages.score import ScoreStage
from alpagasus_ray.filter.stages.validate import ValidateStage

__all__ = ["DecideStage", "PromptStage", "ScoreStage", "ValidateStage"]
