"""The engine interface: token ids in, raw judge outputs out.

An engine knows how to run a model and nothing about decisions; `judgement.py` turns its
raw outputs into scores, so the decision logic exists once for every engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from alpagasus_ray.core.config import JudgeConfig


@dataclass
class JudgeOutput:
    """What an engine returns for one prompt.

    `logprobs`: token id -> log-probability at the first answer position (logprobs mode).
    `text`: the generated judgement (generate mode). `error`: why this row alone failed.
    `num_prompt_tokens`: the prompt's tokens as the engine counted them (an API's usage),
    where that can differ from the prompt stage's count; None: the same.
    """

    logprobs: dict[int, float] | None = None
    text: str | None = None
    num_output_tokens: int = 0
    error: str | None = None
    num_prompt_tokens: int | None = None


class JudgeEngine(ABC):
    """Runs the judge on a batch of prompts, in input order.

    A prompt is its token ids, rendered and tokenized by the prompt stage with the judge's
    tokenizer; an engine that talks to a server (`api.py`) also gets each row's request
    (JSON: the chat messages, or the prompt text), and its ids may be None where no local
    tokenizer is configured.
    """

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg

    @property
    @abstractmethod
    def score_tokens(self) -> dict[int, int]:
        """Token id -> score digit (0..5) for the tokens a judge answers with."""

    @abstractmethod
    def judge(
        self,
        prompts: Sequence[Sequence[int] | None],
        requests: Sequence[str | None] | None = None,
    ) -> list[JudgeOutput]:
        """One output per prompt. Errors of a single row go in its `error`, not raised."""
