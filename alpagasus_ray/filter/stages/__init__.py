"""The filter's stages, in the order a row meets them: one Ray Data `map_batches` callable on
Arrow tables per file. This is the list; `filter/judge.py` chains them and `filter/job.py`
adds the read and the write around the chain.

    read                  data/sources.py (each row keeps its file and position)
    -> SkipDoneStage      skip_done.py: a resumed run's rows already written (job only)
    -> ValidateStage      validate.py: a missing, null, non-string or empty field quarantined
    -> DedupStage         dedup.py: an exact copy set aside, judged once (filter/duplicates.py)
    -> PromptStage        prompt.py: the paper's prompt, tokenized; too long quarantined
                          (run by ScoreStage itself in the HF engine's replicas)
    -> ScoreStage         score.py: the hf and openai engines
       | VLLMRequestStage -> Ray's vLLM engine stage -> VLLMResultStage   vllm_score.py
         (-> TurnGather under judge.turns: each: a conversation's turn rows whole again)
    -> DecideStage        decide.py: kept or rejected against the threshold
    -> write              filter/job.py (Parquet partitioned by decision), then the manifest
"""

from alpagasus_ray.filter.stages.decide import DecideStage
from alpagasus_ray.filter.stages.dedup import DedupStage
from alpagasus_ray.filter.stages.prompt import PromptStage
from alpagasus_ray.filter.stages.score import ScoreStage
from alpagasus_ray.filter.stages.skip_done import SkipDoneStage
from alpagasus_ray.filter.stages.validate import ValidateStage
from alpagasus_ray.filter.stages.vllm_score import VLLMRequestStage, VLLMResultStage

__all__ = [
    "DecideStage",
    "DedupStage",
    "PromptStage",
    "ScoreStage",
    "SkipDoneStage",
    "ValidateStage",
    "VLLMRequestStage",
    "VLLMResultStage",
]
