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
from pydantic import BaseModel, Field, SecretStr, ValidationError

# The sections kept in modules of their own, read from here by every job.
from alpagasus_ray.core.engine_config import APIConfig as APIConfig
from alpagasus_ray.core.engine_config import VLLMConfig as VLLMConfig
from alpagasus_ray.core.judge_config import SCORE_LINE_END as SCORE_LINE_END
from alpagasus_ray.core.judge_config import SCORE_LINE_TOKENS as SCORE_LINE_TOKENS
from alpagasus_ray.core.judge_config import JudgeConfig as JudgeConfig
from alpagasus_ray.core.strict import ConfigError, StrictModel


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
        "are then not read (docs/filtering.md). Training renders it with the model's chat "
        "template, the loss on its assistant turns (docs/training.md).",
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


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: RAY_ADDRESS or a new local instance.")
    num_cpus: int | None = Field(None, gt=0, description="CPUs for a new local instance.")
    prompt_workers: int | tuple[int, int] = Field(
        1,
        description="CPU actors that build and tokenize prompts (fixed or [min, max]). A judge "
        "with no tokenizer (hash; openai without judge.tokenizer) builds them in light tasks, "
        "the hf engine's replicas with their own tokenizer.",
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
