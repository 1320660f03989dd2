"""Judge engines behind one interface, and the post-processing every engine shares."""

from alpagasus_ray.scoring.base import JudgeEngine, JudgeOutput, make_engine
from alpagasus_ray.scoring.judgement import (
    Judgement,
    judge_output_to_judgement,
    judgement_fields,
    score_token_ids,
)
from alpagasus_ray.scoring.parse import parse_score

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
