"""Judge engines behind one interface, and the post-processing every engine shares.

`base.py` is the interface alone; this package's `make_engine` is the one place that knows
the implementations, so the interface never imports them.
"""

from __future__ import annotations

from typing import Any

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.engines.base import JudgeEngine, JudgeOutput
from alpagasus_ray.engines.judgement import (
    Judgement,
    judge_output_to_judgement,
    judgement_fields,
    score_token_ids,
)
from alpagasus_ray.engines.parse import parse_score


def make_engine(cfg: JudgeConfig, api: Any = None) -> JudgeEngine:
    """The engine of `cfg.engine`, imported only when chosen (torch loads with the HF one).
    `api`: for the API engine, the job's budget and key (`api_budget.JobAPI`)."""
    if cfg.engine == "hf":
        from alpagasus_ray.engines.hf import HFEngine

        return HFEngine(cfg)
    if cfg.engine == "openai":
        from alpagasus_ray.engines.api import APIEngine

        return APIEngine(cfg, api)
    if cfg.engine == "hash":
        from alpagasus_ray.engines.hash import HashEngine

        return HashEngine(cfg)
    if cfg.engine == "vllm":
        # vLLM runs as ray.data.llm's own engine stage, not one JudgeEngine per actor: see
        # alpagasus_ray/filter/stages/vllm_score.py.
        raise ValueError("the vllm engine is a ray.data.llm stage; use filter.stages.vllm_score")
    raise ValueError(f"unknown judge engine {cfg.engine!r}")


__all__ = [
    "JudgeEngine",
    "JudgeOutput",
    "Judgement",
    "judge_output_to_judgement",
    "judgement_fields",
    "make_engine",
    "parse_score",
    "score_token_ids",
]
