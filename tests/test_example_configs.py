"""The example filter configs in jobs/configs validate, so the README's commands start."""

from pathlib import Path

import pytest

from alpagasus_ray.core.config import load_config
from alpagasus_ray.filter.config import FilterJobConfig

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
FILTER_EXAMPLES = ["local", "s3", "gpu-cluster-8b", "api"]


@pytest.mark.parametrize("name", FILTER_EXAMPLES)
def test_filter_examples_validate(name):
    assert isinstance(load_config(CONFIGS / f"{name}.yaml", model=FilterJobConfig), FilterJobConfig)


def test_gpu_example_autoscales_vllm_replicas():
    cfg = load_config(CONFIGS / "gpu-cluster-8b.yaml", model=FilterJobConfig)
    assert cfg.judge.engine == "vllm" and isinstance(cfg.judge.replicas, tuple)
    assert cfg.judge.replicas[0] < cfg.judge.replicas[1]
    assert cfg.input.uri.startswith("s3://") and cfg.output.uri.startswith("s3://")


def test_api_example_shares_one_budget_over_its_replicas():
    cfg = load_config(CONFIGS / "api.yaml", model=FilterJobConfig)
    assert cfg.judge.engine == "openai" and cfg.judge.num_gpus_per_replica == 0
    assert cfg.judge.api.requests_per_minute and cfg.judge.api.max_cost
    assert cfg.judge.api.api_key_env == "OPENAI_API_KEY"  # a variable's name, never a key
