"""The judge's section of every job's config (`judge:`): which model, how it is prompted
(rubric, scale, criteria, layout) and how it is run. Re-exported by `core/config.py`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from alpagasus_ray.core.criteria import Criterion, check_names, span
from alpagasus_ray.core.engine_config import APIConfig, VLLMConfig
from alpagasus_ray.core.strict import StrictModel
from alpagasus_ray.text.rubrics import PAPER_SCALE, check_rubric, is_paper

# judge.stop_after_score_line: the score's line ends at the first line break; a score line
# ("Score: 4.5", "4.5/5") is a handful of tokens, so this budget only bounds a rambling one.
SCORE_LINE_END = "\n"
SCORE_LINE_TOKENS = 24


class JudgeConfig(StrictModel):
    """The LLM judge: which model, how it is prompted, and how it is run."""

    engine: Literal["hf", "vllm", "openai", "hash"] = Field(
        "hf",
        description="hf: transformers on CPU/GPU actors; vllm: vLLM replicas (GPU); openai: "
        "an OpenAI-compatible API (judge.api), judge.model being the served model's name; "
        "hash: a stand-in with no model whose score is a hash of the prompt, to check a "
        "cluster's wiring (IO, autoscaling, resume) before paying for a judge.",
    )
    model: str = Field(
        ..., description="Hub id or local/S3-synced path of the judge (hash: only a label)."
    )
    tokenizer: str | None = None
    mode: Literal["logprobs", "generate"] = "logprobs"
    rubric: str = Field(
        "accuracy",
        description="accuracy or helpfulness: the paper's rubric, word for word; or your own "
        "template, the judge's whole user turn with {instruction}, {input} and {output} where "
        "the row goes ({output} required; {{ and }} for literal braces). It asks for a score "
        "on judge.scale, first, as the paper's do. Formerly judge.dimension (still read).",
    )
    scale: tuple[int, int] = Field(
        PAPER_SCALE,
        description="[lo, hi]: the whole scores your rubric asks for (the paper's: 0-5). "
        "logprobs mode reads each as one token of the judge's tokenizer, checked at start "
        "(0-9 usually are, 10 usually is not); generate mode parses numbers in it.",
    )
    rubric_file: str | None = Field(
        None,
        description="Your template in a file (local or s3://, UTF-8), read once at start into "
        "judge.rubric; the run records its text.",
    )
    criteria: dict[str, Criterion] = Field(
        {},
        description="Several criteria judged for every row in one run: name -> {rubric, "
        "rubric_file, scale, threshold}, each with its own score_<name> column; filter.rule "
        "decides the row. Instead of judge.rubric and judge.scale.",
    )
    layout: Literal["prefix", "paper", "row_first"] = Field(
        "prefix",
        description="prefix: the rubric first, shared by every row in a prefix cache; paper: "
        "the reference code's; row_first: the row first, shared by a row's criteria (the "
        "default with judge.criteria).",
    )
    turns: Literal["last", "each"] = Field(
        "last",
        description="Conversation rows: rate the last assistant turn, or each assistant turn "
        "that answers a user turn, with the conversation up to it as its context.",
    )
    turn_aggregate: Literal["min", "mean"] = Field(
        "min",
        description="turns: each: a conversation's score from its turns' scores (min: it is as "
        "good as its worst answer).",
    )
    chat_template: Literal["auto", "never"] = "auto"
    max_model_len: int | None = Field(None, gt=8, description="Default: from the tokenizer/model.")
    max_new_tokens: int = Field(256, gt=0, description="Generate mode only (the paper: 256).")
    stop_after_score_line: bool = Field(
        False,
        description="Generate mode: stop decoding at the first line break (the paper's prompt "
        f"puts the score alone on the first line), after {SCORE_LINE_TOKENS} tokens at most: a "
        "few output tokens a row instead of up to max_new_tokens, and judge_text holds the "
        "score line only, no explanation.",
    )
    structured_score: bool = Field(
        False,
        description="Generate mode on vllm, or openai against a vLLM server: hold decoding to an "
        "answer that starts with a score on judge.scale (structured outputs, a regex), so every "
        "judgement parses. The HF engine cannot constrain its decoding: refused there.",
    )
    min_score_mass: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Logprobs mode: below this mass on the score tokens, fail the row.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="'auto' picks cuda when present, else cpu.")
    trust_remote_code: bool = False
    batch_size: int = Field(64, gt=0, description="Rows per Ray batch handed to one replica.")
    micro_batch_size: int = Field(8, gt=0, description="Rows per forward pass (HF engine).")
    replicas: int | tuple[int, int] = Field(
        1,
        description="An int n is a fixed pool of n replicas (for vllm too, where it becomes "
        "ray.data.llm concurrency (n, n): a bare int there would mean autoscaling 1..n); "
        "[min, max] is an autoscaling range.",
    )
    num_gpus_per_replica: float = Field(
        0.0, ge=0, description="vllm: 0 or tensor_parallel_size x pipeline_parallel_size."
    )
    num_cpus_per_replica: float = Field(
        1.0,
        gt=0,
        description="CPUs a replica holds; on a machine with few CPUs leave ray.task_cpus "
        "free for the read, validate and write tasks.",
    )
    startup_timeout_s: float = Field(
        600.0,
        gt=0,
        description="How long to wait for the first replica's resources (with an autoscaler: "
        "for the node to come up) before failing the job, naming the resource.",
    )
    vllm: VLLMConfig = VLLMConfig()
    api: APIConfig = APIConfig()

    @model_validator(mode="before")
    @classmethod
    def _dimension_is_rubric(cls, data: Any) -> Any:
        """`judge.dimension`, the rubric's name before templates, still reads as the rubric."""
        if isinstance(data, dict) and "dimension" in data:
            if "rubric" in data:
                raise ValueError("judge.dimension is the old name of judge.rubric: set only one")
            data = {**data, "rubric": data["dimension"]}
            del data["dimension"]
        return data

    @model_validator(mode="before")
    @classmethod
    def _criteria_put_the_row_first(cls, data: Any) -> Any:
        """With criteria the row comes first, where every criterion's prompt shares it."""
        if isinstance(data, dict) and data.get("criteria") and "layout" not in data:
            data = {**data, "layout": "row_first"}
        return data

    @field_validator("rubric")
    @classmethod
    def _check_rubric(cls, v: str) -> str:
        return check_rubric(v)

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= v[0] < v[1]:
            raise ValueError(f"{list(v)} is not a scale [lo, hi] of whole scores, 0 <= lo < hi")
        return v

    @field_validator("replicas")
    @classmethod
    def _check_replicas(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1 or hi < lo:
            raise ValueError("replicas must be >= 1, or a range [min, max] with 1 <= min <= max")
        return v

    @model_validator(mode="after")
    def _check_vllm_gpus(self) -> JudgeConfig:
        gpus = self.vllm.tensor_parallel_size * self.vllm.pipeline_parallel_size
        if self.engine == "vllm" and self.num_gpus_per_replica not in (0, gpus):
            raise ValueError(
                f"num_gpus_per_replica={self.num_gpus_per_replica:g} but a vllm replica uses "
                f"tensor_parallel_size x pipeline_parallel_size = {gpus} GPUs; leave it at 0"
            )
        if self.engine == "openai" and not self.api.base_url:
            raise ValueError("judge.engine=openai needs judge.api.base_url")
        if not self.own_rubric() and self.scale != PAPER_SCALE:
            scale, rubric = list(self.scale), self.rubric
            raise ValueError(f"judge.scale {scale} needs your own judge.rubric: the paper's "
                             f"{rubric} rubric asks for a score from 0 to 5")  # fmt: skip
        for key in ("stop_after_score_line", "structured_score"):
            if getattr(self, key) and self.mode != "generate":
                raise ValueError(f"judge.{key} is for mode generate (logprobs mode reads a "
                                 "single token already)")  # fmt: skip
        if self.structured_score and self.engine == "hf":
            raise ValueError("judge.structured_score needs an engine that constrains decoding: "
                             "vllm, or openai against a vLLM server")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _check_criteria(self) -> JudgeConfig:
        if not self.criteria:
            return self
        check_names(self.criteria)
        defaults = {"rubric": "accuracy", "rubric_file": None, "scale": PAPER_SCALE}
        given = [key for key, value in defaults.items() if getattr(self, key) != value]
        if given:
            raise ValueError(f"judge.criteria gives each criterion its rubric and scale: leave "
                             f"judge.{given[0]} unset")  # fmt: skip
        if self.turns == "each":
            raise ValueError("judge.criteria rates one answer a row: judge.turns must be last")
        if self.structured_score and len({c.scale for c in self.criteria.values()}) > 1:
            raise ValueError("judge.structured_score holds every answer to one scale: give the "
                             "criteria one scale, or turn it off")  # fmt: skip
        return self

    def own_rubric(self) -> bool:
        """A user's template, given or to be read from `rubric_file` at start."""
        return self.rubric_file is not None or not is_paper(self.rubric)

    def criterion_judges(self) -> dict[str, JudgeConfig]:
        """Each criterion's judge: this one with the criterion's rubric and scale."""
        return {
            name: self.model_copy(update={"rubric": c.rubric, "rubric_file": c.rubric_file,
                                          "scale": c.scale, "criteria": {}})
            for name, c in self.criteria.items()
        }  # fmt: skip

    def engine_judge(self) -> JudgeConfig:
        """The judge an engine is built from: with criteria, one that reads the scores of
        every criterion's scale."""
        if not self.criteria:
            return self
        scale = span([c.scale for c in self.criteria.values()])
        return self.model_copy(update={"scale": scale, "criteria": {}})

    def answer_tokens(self) -> int:
        """The most tokens one answer may take: what a prompt leaves room for, what an API
        call reserves, and what a dry run prices."""
        if self.mode == "logprobs":
            return 1
        if self.stop_after_score_line:
            return min(self.max_new_tokens, SCORE_LINE_TOKENS)
        return self.max_new_tokens

    def stop(self) -> list[str] | None:
        """Where generate mode stops before `answer_tokens`: the end of the score's line."""
        return [SCORE_LINE_END] if self.stop_after_score_line else None

    def loads_model(self) -> bool:
        """False where `model` is only a name: an API's served model, or the hash stand-in's
        label. Such a judge gets each row's request text from the prompt stage."""
        return self.engine not in ("openai", "hash")

    def tokenizer_name(self) -> str | None:
        """The tokenizer the prompt stage counts and checks with. A judge that loads no model
        has one only where `tokenizer` is set."""
        return self.tokenizer or self.model if self.loads_model() else self.tokenizer

    def prompts_in_replica(self) -> bool:
        """Whether the judge's replicas build their rows' prompts themselves: the HF
        engine's, which load the judge's tokenizer anyway (the same object, `load_tokenizer`
        is cached) and tokenize a batch in a small part of the time their model takes on it.
        No prompt actor to start, no second copy of the tokenizer."""
        return self.engine == "hf"

    def prompts_on_actors(self) -> bool:
        """Whether a job's prompt stage runs on actors of its own: where it loads a tokenizer
        (once per actor) and the replicas do not build the prompts. Without one (the hash
        stand-in, an API judge with no `tokenizer`) it only renders request texts, in light
        tasks: no actor process to start."""
        return self.tokenizer_name() is not None and not self.prompts_in_replica()
