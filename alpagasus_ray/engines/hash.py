"""A stand-in judge with no model: a row's score is a hash of its prompt.

For checking a cluster's wiring (input, output, autoscaling, resume, S3) before paying for a
judge, and for the tests of those mechanics: it imports no torch and loads nothing, so a
replica starts in well under a second. Its scores say nothing about a row's quality; the
manifest's `judge.engine` and the report say so.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

from alpagasus_ray.engines.api import estimate_tokens
from alpagasus_ray.engines.base import JudgeEngine, JudgeOutput
from alpagasus_ray.text.rubrics import PAPER_SCALE, Scale, scale_scores

STAND_IN_NOTE = "the hash stand-in judge ran no model: its scores are a hash of each prompt"


def hash_probs(text: str, scale: Scale = PAPER_SCALE) -> list[float]:
    """P(score) for each score of the scale from the text's digest: spread over the scale
    (cubed weights), the same on every machine and in every run."""
    n = len(scale_scores(scale))
    data = text.encode("utf-8")
    if n <= 64:
        digest = hashlib.blake2b(data, digest_size=n).digest()
    else:  # blake2b's digest stops at 64 bytes
        digest = hashlib.shake_256(data).digest(n)
    weights = [(b + 1) ** 3 for b in digest]
    total = sum(weights)
    return [w / total for w in weights]


class HashEngine(JudgeEngine):
    """Answers logprobs mode with `hash_probs` of the row's request (the rating prompt as an
    API judge would send it) and generate mode with its likeliest digit."""

    @property
    def score_tokens(self) -> dict[int, int]:
        return {s: s for s in scale_scores(self.cfg.scale)}  # its "token ids": the scores

    def judge(
        self,
        prompts: Sequence[Sequence[int] | None],
        requests: Sequence[str | None] | None = None,
    ) -> list[JudgeOutput]:
        requests = requests or [None] * len(prompts)
        return [self._one(ids, req) for ids, req in zip(prompts, requests, strict=True)]

    def _one(self, ids: Sequence[int] | None, request: str | None) -> JudgeOutput:
        if not request:
            return JudgeOutput(error="the hash judge got no request for this row")
        probs = hash_probs(request, self.cfg.scale)
        scores = scale_scores(self.cfg.scale)
        # Without token ids (no judge.tokenizer) its prompt is counted as the dry run
        # estimates one, as a server would report its usage, so the counts add up.
        counted = None
        if not ids:
            req = json.loads(request)
            counted = estimate_tokens(req.get("messages"), req.get("prompt"))
        if self.cfg.mode == "logprobs":
            logprobs = {s: math.log(p) for s, p in zip(scores, probs, strict=True)}
            return JudgeOutput(logprobs=logprobs, num_output_tokens=1, num_prompt_tokens=counted)
        best = max(scores, key=lambda s: probs[s - scores.start])  # the first, on a tie
        text = f"{best}\n{STAND_IN_NOTE}."
        return JudgeOutput(text=text, num_output_tokens=2, num_prompt_tokens=counted)
