"""Filter then fine-tune as one job (`alpagasus-ray pipeline`, `jobs/pipeline.py`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import job_data
from helpers import TINY_TRAIN, write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import ConfigError, build_config, load_config
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.pipeline import PipelineConfig, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def pipeline_data(input_uri: str, output_uri: str, model, runs, threshold=2.0) -> dict:
    return {
        **job_data(input_uri, output_uri, model),
        "filter": {"threshold": threshold},
        "storage": {"region": "eu-west-1"},
        "finetune": {
            "model": {"name": str(model)},
            "train": dict(TINY_TRAIN),
            "run": {"name": "sft", "storage_path": str(runs), "num_workers": 2},
        },
    }


def test_finetune_reads_the_filter_output_with_its_storage(tmp_path):
    cfg = build_config(PipelineConfig, pipeline_data("in.jsonl", "s3://b/out", "m", tmp_path))
    assert cfg.finetune.data.uri == "s3://b/out"
    assert cfg.finetune.storage.region == "eu-west-1"
    data = pipeline_data("in.jsonl", "s3://b/out", "m", tmp_path)
    data["finetune"]["data"] = {"uri": "s3://b/elsewhere"}
    with pytest.raises(ConfigError, match="finetune.data.uri"):
        build_config(PipelineConfig, data)


def test_example_pipeline_config_validates():
    cfg = load_config(ROOT / "jobs" / "configs" / "pipeline.yaml", model=PipelineConfig)
    assert cfg.judge.engine == "vllm" and cfg.finetune.train.strategy == "fsdp"
    assert cfg.finetune.data.uri == cfg.output.uri


def test_job_script_reports_a_config_error(tmp_path):
    config = tmp_path / "pipeline.json"
    data = pipeline_data("in.jsonl", "out", "m", tmp_path)
    data["finetune"]["train"]["global_batch_size"] = 3  # not a multiple of 2 workers x 1
    config.write_text(json.dumps(data))
    proc = subprocess.run(
        [sys.executable, "jobs/pipeline.py", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "finetune" in proc.stderr and "multiple" in proc.stderr


@pytest.mark.slow
def test_filter_then_finetune_on_the_kept_rows(ray_session, tiny_judge, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(20, seed=4) + ["{broken"])
    config = tmp_path / "pipeline.json"
    data = pipeline_data(str(src), str(tmp_path / "out"), tiny_judge, tmp_path / "runs")
    config.write_text(json.dumps(data))  # JSON is YAML
    assert main(["pipeline", "--config", str(config)]) == 0

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    kept = manifest["counts"]["kept"]
    assert manifest["invariant_ok"] and manifest["rows_read"] == 21 and kept >= 2
    summary = json.loads((tmp_path / "runs" / "sft" / "summary.json").read_text())
    # Exactly the kept rows were trained on: the rejected and quarantined ones never reach it.
    assert summary["rows_read"] == kept == summary["examples"]
    assert summary["skipped_rows"] == 0 and summary["epochs_done"] == 1
    assert summary["steps"] == kept // 2
    assert (tmp_path / "runs" / "sft" / "export" / "config.json").exists()


@pytest.mark.slow
def test_too_few_kept_rows_stop_before_training(ray_session, tiny_judge, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(6, seed=5))
    # An expected score of 5.0 needs all probability on "5": a random judge keeps nothing.
    data = pipeline_data(str(src), str(tmp_path / "out"), tiny_judge, tmp_path / "runs", 5.0)
    with pytest.raises(ValueError, match="kept 0 of 6 rows"):
        run_pipeline(build_config(PipelineConfig, data))
    assert (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "runs").exists()
