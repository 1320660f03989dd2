"""Every third-party module the package imports, at its top or inside a function, belongs
to a distribution that pyproject.toml declares, as a dependency or in an extra: a user who
installs with pip gets what the code needs (an import that only works because some other
package happens to pull its distribution in fails here)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def imported_top_level_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "alpagasus_ray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"alpagasus_ray", "__future__"}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"]]
    specs += [d for extra in project["optional-dependencies"].values() for d in extra]
    return {re.split(r"[\[<>=!~; ]", spec)[0].lower().replace("_", "-") for spec in specs}


def test_every_imported_module_is_a_declared_distribution():
    installed = packages_distributions()
    wanted = declared()
    missing = {}
    for name in sorted(imported_top_level_names()):
        # Not installed here (an extra this environment lacks): known by its own name.
        dists = {d.lower().replace("_", "-") for d in installed.get(name, [name])}
        if not dists & wanted:
            missing[name] = sorted(dists) or "not installed"
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
