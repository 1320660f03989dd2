"""Writes docs/configuration-reference.md from the pydantic config models, so the reference
is the code's own: every key, its type, its default and its `Field(description=...)`.

    python docs/config_reference.py          # rewrite the page
    (tests/test_docs.py fails when the page and the models disagree)
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

PAGE = Path(__file__).with_name("configuration-reference.md")
COMMANDS = [
    ("filter", "alpagasus_ray.filter.config", "FilterJobConfig"),
    ("train", "alpagasus_ray.train.config", "TrainConfig"),
    ("evaluate", "alpagasus_ray.evaluate.config", "EvalConfig"),
    ("experiment", "alpagasus_ray.experiment.config", "ExperimentConfig"),
]
# A command whose config is another's plus sections of its own: only those are listed.
OWN_SECTIONS = {
    "experiment": (
        ("experiment", "evaluation"),
        "The filter's sections, `finetune` (a train config without `data` and without "
        "`run.storage_path`, `run.name` and `run.export_uri`, which the experiment sets), and:",
    ),
}


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("NoneType", "None")
    if isinstance(annotation, type):
        text = annotation.__name__
    for prefix in ("alpagasus_ray.", "pydantic.types.", "pathlib."):
        text = text.replace(prefix, "")
    return text.replace("|", "\\|")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else f"`{value!r}`"
    return f"`{field.default!r}`"


def rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _model_of(field.annotation)
        if nested is not None:  # a section: its own keys, `[]` for each item of a list,
            origin = typing.get_origin(field.annotation)  # `<name>` for each of a mapping
            if origin is dict:
                out.append(f"| `{key}` | dict[str, {nested.__name__}] | `{{}}` | "
                           f"{field.description or ''} |")  # fmt: skip
            many = origin in (list, tuple)
            inner = "[]." if many else ".<name>." if origin is dict else "."
            out += rows(nested, f"{key}{inner}")
            continue
        about = (field.description or "").replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {about} |")
    return out


def render() -> str:
    import importlib

    parts = ["# Configuration reference", "",
             "Generated from the pydantic models by `docs/config_reference.py`; every key can "
             "be set in the YAML file or with `--set key=value`.", ""]  # fmt: skip
    for command, module, name in COMMANDS:
        model = getattr(importlib.import_module(module), name)
        keys = rows(model)
        parts += [f"## `alpagasus-ray {command}` (`{name}`)", ""]
        if command in OWN_SECTIONS:
            sections, note = OWN_SECTIONS[command]
            keys = [r for r in keys if r.split("`")[1].split(".")[0] in sections]
            parts += [note, ""]
        parts += ["| key | type | default | what it is |", "|---|---|---|---|", *keys, ""]
    return "\n".join(parts)


if __name__ == "__main__":
    PAGE.write_text(render())
    sys.exit(0)
