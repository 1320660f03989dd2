"""The configuration every job shares: pydantic sections loadable from YAML, with
`key.path=value` overrides. Each job's own config (`filter/config.py`, `train/config.py`,
`evaluate/config.py`) is built from these sections.

Every section forbids unknown keys, so a typo fails at start-up with the key's dotted path
instead of being silently ignored halfway through a multi-hour GPU job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from alpagasus_ray.core.engine_config import APIConfig, VLLMConfig
from alpagasus_ray.core.strict import ConfigError, StrictModel
from alpagasus_ray.text.rubrics import PAPER_SCALE, check_rubric, is_paper

# judge.stop_after_score_line: the score's line ends at the first line break; a score line
# ("Score: 4.5", "4.5/5") is a handful of tokens, so this budget only bounds a rambling one.
SCORE_LINE_END = "\n"
SCORE_LINE_TOKENS = 24


class ColumnMap(StrictModel):
    """Which input columns hold the triple; they are renamed to the canonical names."""

    instruction: str = "instruction"
    input: str | None = Field("input", description="None when the data has no input column.")
    output: str = "output"
    id: str | None = Field(None, description="Column with a stable row id; default: content hash.")
    messages: str | None = Field(
        None,
        description="A column holding a conversation (OpenAI role/content or ShareGPT "
        "from/value turns): its last assistant turn is judged, the user turn before it as the "
        "instruction and the turns before that as the input; instruction, input and output "
        "are then not read (docs/filtering.md).",
    )


class StorageConfig(StrictModel):
    """Object-store access. Unset fields fall back to the standard AWS environment/profile."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    anon: bool = False

    def s3_options(self) -> dict[str, Any]:
        """Keyword arguments for `s3fs.S3FileSystem`, with only the fields that are set."""
        opts: dict[str, Any] = {"anon": self.anon}
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        if self.region:
            opts["client_kwargs"] = {"region_name": self.region}
        if self.profile:
            opts["profile"] = self.profile
        for field, key in (
            ("access_key_id", "key"),
            ("secret_access_key", "secret"),
            ("session_token", "token"),
        ):
            value = getattr(self, field)
            if value is not None:
                opts[key] = value.get_secret_value()
        return opts


class InputConfig(StrictModel):
    uri: str = Field(..., description="A file, a directory or a glob; local path or s3://.")
    format: Literal["auto", "parquet", "arrow", "json", "jsonl", "csv", "tsv"] = Field(
        "auto",
        description="auto: each file by its name (docs/filtering.md); else every file is read "
        "in this format (jsonl: json; a JSON array or JSON lines either way)",
    )
    columns: ColumnMap = ColumnMap()
    limit: int | None = Field(None, gt=0, description="Read at most this many rows.")
    rows_per_block: int | None = Field(
        None,
        gt=0,
        description="Rows per block read (a block goes to one judge replica); default: "
        "judge.batch_size, so one big file fans out over every replica.",
    )
    on_unreadable_file: Literal["fail", "skip"] = Field(
        "fail",
        description="fail: a corrupt or unreadable file fails the job, naming it; skip: it is "
        "skipped and listed in the manifest and report (rows read before the error count).",
    )


class OutputConfig(StrictModel):
    uri: str
    overwrite: bool = False
    max_rows_per_file: int | None = Field(None, gt=0)
    retry_failed: bool = Field(
        False,
        description="judge again the engine_error rows of a finished output (the same "
        "command's settings); its other rows are kept as they are",
    )


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
    layout: Literal["prefix", "paper"] = "prefix"
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

    def own_rubric(self) -> bool:
        """A user's template, given or to be read from `rubric_file` at start."""
        return self.rubric_file is not None or not is_paper(self.rubric)

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


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: RAY_ADDRESS or a new local instance.")
    num_cpus: int | None = Field(None, gt=0, description="CPUs for a new local instance.")
    prompt_workers: int | tuple[int, int] = Field(
        1, description="CPU actors that build and tokenize prompts (fixed or [min, max])."
    )
    prompt_worker_cpus: float = Field(0.5, gt=0)
    task_cpus: float = Field(
        0.25, gt=0, description="CPUs of the light read/validate/decide/write tasks."
    )
    verbose: bool = Field(
        False,
        description="Ray's own logs (operator plans, warnings, worker output and tracebacks); "
        "off, a failure is one line and Ray's logs stay in its session folder. CLI: --verbose.",
    )


def parse_override(item: str) -> tuple[list[str], Any]:
    """`judge.model=foo` -> (['judge', 'model'], 'foo'); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({e})") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} is not a section")
            node = child
        node[path[-1]] = value
    return data


_KEY_FIRST = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+)[:= ]")  # "judge.rubric: ...", "filter.x 7 ..."


def format_validation_error(err: ValidationError) -> str:
    """One line that names every bad key: `invalid configuration (judge.mode): <why>`."""
    problems = [_problem(e) for e in err.errors()]
    keys = ", ".join(key for key, _ in problems)
    return f"invalid configuration ({keys}): " + "; ".join(text for _, text in problems)


def _problem(error: Any) -> tuple[str, str]:
    """(key, text) of one error. A check across keys names its key first, as seen from the
    section that checks it ("judge.scale [1, 10] needs ..." in `judge`): that key, not the
    section's."""
    msg = " ".join(str(error["msg"]).removeprefix("Value error, ").split())
    loc = [str(p) for p in error["loc"]]
    named = _KEY_FIRST.match(msg)
    if named is None:
        key = ".".join(loc) or "<root>"
        return key, f"{key}: {msg}"
    said = named.group(1)
    if loc and loc[-1] == said.split(".")[0]:
        loc = loc[:-1]  # "judge.scale" said in judge
    key = ".".join([*loc, said])
    return key, msg if key == said else f"{key}: {msg}"


def build_config(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, *, model: type[BaseModel]
) -> Any:
    """Load `model` from a YAML file (optional) and apply `key.path=value` overrides."""
    return build_config(model, apply_overrides(load_yaml(path), list(overrides or [])))
