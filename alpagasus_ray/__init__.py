"""alpagasus-ray: filter instruction-tuning data with an LLM judge on Ray.

The library entry point is `judge_dataset` (`filter/judge.py`): a Ray Dataset in, the same
rows out with the judge's score and decision. Loaded on first use, so that importing the
package (the CLI does) stays quick.
"""

from __future__ import annotations

from typing import Any

_PUBLIC = {
    "judge_dataset": "alpagasus_ray.filter.judge",
    "JudgeConfig": "alpagasus_ray.core.config",
    "ColumnMap": "alpagasus_ray.core.config",
    "RayConfig": "alpagasus_ray.core.config",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'alpagasus_ray' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
