"""The example filter configs in jobs/configs validate, so the README's commands start."""

from pathlib import Path

import pytest

from alpagasus_ray.config import JobConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
FILTER_EXAMPLES = ["local", "s3", "gpu-cluster-8b"]


@pytest.mark.parametrize("name", FILTER_EXAMPLES)
def test_filter_examples_validate(name):
    assert isinstance(load_config(CONFIGS / f"{name}.yaml"), JobConfig)


def test_gpu_example_autoscales_vllm_replicas():
    cfg = load_config(CONFIGS / "gpu-cluster-8b.yaml")
    assert cfg.judge.engine == "vllm" and isinstance(cfg.judge.replicas, tuple)
    assert cfg.judge.replicas[0] < cfg.judge.replicas[1]
    assert cfg.input.uri.startswith("s3://") and cfg.output.uri.startswith("s3://")
