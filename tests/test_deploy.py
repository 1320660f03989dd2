"""cluster.yaml against the autoscaler schema shipped in ray; the image tag against the pins."""

import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
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


SCHEMAS = ROOT.parent / "shared" / "schemas"


def rayjob_documents() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "rayjob.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert sorted(by_kind) == ["ConfigMap", "RayJob"] and len(docs) == 2
    return by_kind["RayJob"], by_kind["ConfigMap"]


def unknown_fields(value: object, schema: dict, where: str = "") -> list[str]:
    """Keys the schema does not declare: the API server drops them without a word (what
    `kubectl apply --validate=strict` would refuse), and JSON Schema alone allows them."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        found = [f"{where}.{k}" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                found += unknown_fields(v, props[k], f"{where}.{k}")
        return found
    extra = schema.get("additionalProperties")
    if isinstance(value, dict) and isinstance(extra, dict):
        return [e for k, v in value.items() for e in unknown_fields(v, extra, f"{where}.{k}")]
    if isinstance(value, list) and "items" in schema:
        return [e for i, v in enumerate(value)
                for e in unknown_fields(v, schema["items"], f"{where}[{i}]")]  # fmt: skip
    return []


def test_the_rayjob_is_valid_for_kuberay():
    """Against the CRD's own OpenAPI schema, offline: a wrong type, a missing required key or
    a typo'd one fails here, not when the API server refuses it or silently drops it."""
    crd = yaml.safe_load((SCHEMAS / "kuberay-v1.7-ray.io_rayjobs.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = version["schema"]["openAPIV3Schema"]
    job, _ = rayjob_documents()
    jsonschema.validate(job, schema)
    assert unknown_fields(job, schema) == []
    typo = {**job, "spec": {**job["spec"], "shutdownAfterJobFinish": True}}
    assert unknown_fields(typo, schema) == [".spec.shutdownAfterJobFinish"]
    assert job["apiVersion"] == f"{crd['spec']['group']}/v1" and job["kind"] == "RayJob"
    unknown = {**job, "spec": {**job["spec"], "shutdownAfterJobFinishes": "yes"}}
    with pytest.raises(jsonschema.ValidationError):  # the schema is really applied
        jsonschema.validate(unknown, schema)


def test_the_rayjob_runs_our_image_ray_and_entrypoint_on_gpus_from_zero():
    job, config_map = rayjob_documents()
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"]
    image = yaml.safe_load((ROOT / "cluster.yaml").read_text())["docker"]["image"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs no work
    pods = [head["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    assert {c["image"] for p in pods for c in p["spec"]["containers"]} == {image}

    def limits(group: dict) -> dict:
        return group["template"]["spec"]["containers"][0]["resources"]["limits"]

    gpu = [g for g in cluster["workerGroupSpecs"] if "nvidia.com/gpu" in limits(g)]
    assert gpu and all(g["minReplicas"] == 0 == g["replicas"] and g["maxReplicas"] >= 1
                       for g in gpu)  # fmt: skip
    # The entrypoint is a script of jobs/, in the image where the Dockerfile puts it, reading
    # the config the ConfigMap mounts; that config is a valid filter config on shared storage.
    python, script, flag, config_path = spec["entrypoint"].split()
    workdir = re.search(r"^WORKDIR (\S+)", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    assert python == "python" and flag == "--config"
    inside = workdir.group(1) + "/"
    assert script.startswith(inside) and (ROOT / script.removeprefix(inside)).is_file()
    mount = head["template"]["spec"]["containers"][0]["volumeMounts"][0]
    volume = next(v for v in head["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    name = config_path.removeprefix(mount["mountPath"] + "/")
    from alpagasus_ray.core.config import build_config
    from alpagasus_ray.filter.config import FilterJobConfig

    cfg = build_config(FilterJobConfig, yaml.safe_load(config_map["data"][name]))
    assert cfg.input.uri.startswith("s3://") and cfg.output.uri.startswith("s3://")
    assert cfg.judge.engine == "vllm" and isinstance(cfg.judge.replicas, (list, tuple))
