"""Configuration of the evaluate job: the models, the judge, how answers are generated, and
the test sets, each read in its own stored format (question / id / input columns).

The paper's four test sets ship with the package and are the default, so a config names only
the models and judge (`EvalSettings` is everything else, which the experiment reuses).
"""

from __future__ import annotations

from importlib.resources import files
from itertools import combinations
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from alpagasus_ray.core.config import (
    APIConfig,
    JudgeConfig,
    OutputConfig,
    RayConfig,
    StorageConfig,
    StrictModel,
    VLLMConfig,
)
from alpagasus_ray.data.io import join


class ModelSpec(StrictModel):
    """A model to evaluate: hub id, local path, or a fine-tune export directory; it answers
    through the `generation` section's engine unless it names its own."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: str = Field(..., description="Hub id, local path or export folder; openai: its name.")
    tokenizer: str | None = None
    engine: Literal["hf", "vllm", "openai"] | None = Field(
        None, description="This model's engine; default: generation.engine."
    )
    api: APIConfig | None = Field(
        None, description="This model's server (engine openai); default: generation.api."
    )
    template: Literal["alpaca", "chat"] = Field(
        "alpaca",
        description="alpaca: the paper's Alpaca prompt; chat: the question as one user turn "
        "through the model's own chat template (a model tuned on conversations).",
    )


class TestSetConfig(StrictModel):
    """One test set, read in its own format: which field holds the question and the id."""

    __test__ = False  # not a pytest class
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: str = Field(..., description="JSON/JSONL/Parquet; relative paths resolve to data_dir.")
    question: str = Field(..., description="Column with the instruction / question text.")
    id: str | None = Field(None, description="Id column; None: a hash of the question.")
    input: str | None = Field(
        None, description="Dotted path to an input, e.g. instances.0.input (Self-Instruct)."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N questions.")


PAPER_TEST_SETS = [
    {"name": "vicuna", "path": "vicuna_test_set.jsonl", "question": "text", "id": "question_id"},
    {"name": "koala", "path": "koala_test_set.jsonl", "question": "prompt", "id": "id"},
    {"name": "wizardlm", "path": "wizardlm_test_set.jsonl", "question": "Instruction", "id": "idx"},
    {
        "name": "sinstruct",
        "path": "sinstruct_test_set.jsonl",
        "question": "instruction",
        "id": "id",
        "input": "instances.0.input",
    },
]


def packaged_test_sets() -> str:
    """The folder of the four test sets shipped with the package, wherever it is installed."""
    return str(files("alpagasus_ray.evaluate") / "test_sets")


class GenerationConfig(StrictModel):
    """How the candidate models answer: greedy, Alpaca template, same engines as the judge."""

    engine: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="openai: each model's `path` is its name on the server of `api`."
    )
    max_new_tokens: int = Field(512, gt=0)
    max_model_len: int | None = Field(None, gt=8)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    batch_size: int = Field(64, gt=0)
    micro_batch_size: int = Field(8, gt=0)
    replicas: int | tuple[int, int] = 1
    num_gpus_per_replica: float = Field(0.0, ge=0)
    num_cpus_per_replica: float = Field(1.0, gt=0)
    vllm: VLLMConfig = VLLMConfig()
    api: APIConfig = APIConfig()

    def judge_config(self, model: ModelSpec) -> JudgeConfig:
        """The model as a generate-mode engine config: its own engine and server where it
        names them; the Alpaca prompt as it is, or its chat template (`template: chat`)."""
        return JudgeConfig(
            model=model.path,
            tokenizer=model.tokenizer,
            mode="generate",
            chat_template="auto" if model.template == "chat" else "never",
            **self.model_dump(exclude={"vllm", "api", "engine"}),
            engine=model.engine or self.engine,
            vllm=self.vllm,
            api=model.api or self.api,
        )


class EvalSettings(StrictModel):
    """How models are compared, whichever they are: the judge, how answers are generated and
    on which test sets (the evaluate job adds its models and output; the experiment its)."""

    judge: JudgeConfig
    generation: GenerationConfig = GenerationConfig()
    data_dir: str | None = Field(
        None,
        description="Where relative test set paths resolve; default: the package's own copy "
        "of the paper's four sets.",
    )
    test_sets: list[TestSetConfig] = Field(
        default_factory=lambda: [TestSetConfig(**t) for t in PAPER_TEST_SETS]
    )
    extra_test_sets: list[TestSetConfig] = Field(
        default_factory=list, description="Your own sets, evaluated after `test_sets`."
    )
    limit: int | None = Field(None, gt=0, description="Slice every test set to N questions.")

    @model_validator(mode="before")
    @classmethod
    def _judge_generates(cls, data: Any) -> Any:
        """The pairwise judge writes two scores: generate mode unless told otherwise."""
        if isinstance(data, dict) and isinstance(data.get("judge"), dict):
            data = {**data, "judge": {"mode": "generate", **data["judge"]}}
        return data

    @field_validator("judge")
    @classmethod
    def _check_mode(cls, v: JudgeConfig) -> JudgeConfig:
        if v.mode != "generate":
            raise ValueError("the pairwise judge needs mode=generate (it writes two scores)")
        if v.engine == "hash":
            raise ValueError("judge.engine=hash is the filter's stand-in: it cannot judge pairs")
        if v.criteria:
            raise ValueError("judge.criteria are the filter's: the pairwise judge rates with "
                             "the paper's pairwise prompt")  # fmt: skip
        return v

    @model_validator(mode="after")
    def _check_test_sets(self) -> EvalSettings:
        sets = [t.name for t in self.all_test_sets()]
        if len(set(sets)) != len(sets):
            raise ValueError(f"test set names must be unique: {sets}")
        return self

    def all_test_sets(self) -> list[TestSetConfig]:
        return [*self.test_sets, *self.extra_test_sets]

    def test_set_uri(self, t: TestSetConfig) -> str:
        if "://" in t.path or t.path.startswith("/"):
            return t.path
        return join(self.data_dir or packaged_test_sets(), t.path)


class EvalConfig(EvalSettings):
    """The evaluate job: models x test sets -> answers; pairs x both orders -> judgements."""

    models: list[ModelSpec] = Field(..., min_length=2)
    pairs: list[tuple[str, str]] | None = Field(
        None, description="[A, B] pairs (A is the model the outcome is for); default: all."
    )
    output: OutputConfig
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _check_names(self) -> EvalConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        for a, b in self.pairs or []:
            if a not in names or b not in names or a == b:
                raise ValueError(f"pair [{a}, {b}] must name two different models of {names}")
        return self

    def model_pairs(self) -> list[tuple[str, str]]:
        return (
            [tuple(p) for p in self.pairs]
            if self.pairs
            else list(combinations([m.name for m in self.models], 2))
        )
