"""The docs hold: the site builds with `mkdocs build --strict` (a broken link or a page
missing from the navigation fails), the configuration reference is what the models say, the
README's minimal config is a valid one, and the README stays a five-minute read."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from alpagasus_ray.core.config import build_config
from alpagasus_ray.filter.config import FilterJobConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "configuration-reference" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    """The check above can fail: the same site with one link to a page that is not there."""
    docs = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(ROOT / "docs"), str(docs)], check=True)
    (docs / "library.md").write_text((docs / "library.md").read_text() + "\n[x](nowhere.md)\n")
    config = (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}")
    (tmp_path / "mkdocs.yml").write_text(config)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "s")],
        cwd=tmp_path, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "nowhere.md" in proc.stdout + proc.stderr


def test_the_configuration_reference_is_the_models_own():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "docs" /
                                                  "config_reference.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "configuration-reference.md").read_text()
    assert page == module.render(), "stale: run `python docs/config_reference.py`"
    assert "| `judge.stop_after_score_line` | bool | `False` |" in page


def test_the_readme_config_is_valid_and_the_readme_short():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## A minimal config\n\n```yaml\n(.*?)```", readme, re.S).group(1)
    cfg = build_config(FilterJobConfig, yaml.safe_load(block))
    assert cfg.judge.engine == "vllm" and cfg.judge.replicas == (1, 8)
    assert len(readme.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):  # links into the docs resolve
        assert (ROOT / link).is_file(), link
