"""cluster.yaml against the autoscaler schema shipped in ray; the image tag against the pins."""

import json
import re
import sys
from pathlib import Path

import jsonschema
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_cluster_yaml_is_valid_for_the_autoscaler():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"


def test_gpu_workers_scale_from_zero_and_head_runs_no_work():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    gpu = [t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "a GPU worker group is needed"
    for group in gpu:
        assert group["min_workers"] == 0 and group["max_workers"] >= 1
        assert all(isinstance(v, int) for v in group["resources"].values())


def test_docker_base_image_matches_the_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ray_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("ray["))
    ray_version = ray_pin.split("==")[1]
    assert ray_version == ray.__version__

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    match = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu\s*$", dockerfile, re.M)
    assert match, "the base image must be an official Ray GPU image"
    assert match.group(1) == ray_version
    image_python = (int(match.group(2)), int(match.group(3)))
    minimum = tuple(int(x) for x in re.findall(r"\d+", pyproject["project"]["requires-python"]))
    assert image_python >= minimum
    assert "[vllm" in dockerfile  # the image serves the vLLM judge
    # ... at the version the contract tests check (the Makefile installs that one for them)
    vllm_pin = next(d for d in pyproject["project"]["optional-dependencies"]["vllm"] if
                    d.startswith("vllm"))  # fmt: skip
    assert re.fullmatch(r"vllm==\d+\.\d+\.\d+", vllm_pin), vllm_pin
    assert f"--no-deps {vllm_pin}" in (ROOT / "Makefile").read_text()


def test_cluster_image_is_the_one_the_dockerfile_documents():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    tag = config["docker"]["image"]
    assert tag in (ROOT / "docker" / "Dockerfile").read_text()
