"""Ray Train fine-tuning on CPU, 2 workers x 1 CPU: loss falls, checkpoints, resume, export,
and training straight from a filter output's kept partition."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_refusal, job_config, session_cluster_env
from helpers import write_jsonl

from alpagasus_ray.core.config import ConfigError, build_config
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.train.config import TrainConfig
from alpagasus_ray.train.job import run_train

pytestmark = pytest.mark.slow
EPOCHS = 6  # 12 steps: the last one is both an epoch's end and a 3-step checkpoint


def train_config(data_uri: str, model, storage, **train) -> TrainConfig:
    return build_config(
        TrainConfig,
        {
            "data": {"uri": data_uri},
            "model": {"name": str(model)},
            "train": {
                "epochs": EPOCHS,
                "learning_rate": 5e-3,
                "global_batch_size": 8,
                "per_device_batch_size": 2,
                "max_length": 256,
                "warmup_ratio": 0.0,
                "log_every_steps": 2,
                **train,
            },
            "run": {"name": "sft", "storage_path": str(storage), "num_workers": 2},
        },
    )


@pytest.fixture(scope="module")
def trained(ray_session, tiny_judge, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    bad = ["{broken", {"instruction": "No output here."}, {"instruction": "x", "output": 7}]
    data = write_jsonl(root / "train.jsonl", synthetic_examples(16, seed=1) + bad)
    cfg = train_config(str(data), tiny_judge, root / "runs", save_every_steps=3)
    summary = run_train(cfg)
    # The uninterrupted run's model, before a later test trains the same run on.
    shutil.copytree(summary["export"], root / "uninterrupted")
    return cfg, {**summary, "uninterrupted": root / "uninterrupted"}


def test_loss_falls_clearly(trained):
    _, summary = trained
    losses = [m["loss"] for m in summary["metrics"] if m["kind"] == "epoch"]
    assert len(losses) == EPOCHS
    print("epoch losses", [round(x, 3) for x in losses])
    assert losses[-1] < 0.5 * losses[0], losses


def test_no_placement_group_cleaner_watches_the_run(trained):
    """Ray Train's cleaner, which removed a healthy run's placement group on a busy machine
    (reading a late answer of the state API as "controller dead"), is never started."""
    from ray._private.state import actors

    classes = {a["ActorClassName"] for a in actors().values()}
    assert "RayTrainWorker" in classes  # what this run started is listed
    assert not [c for c in classes if "PlacementGroupCleaner" in c], classes


def test_bad_rows_are_skipped_and_counted(trained):
    _, summary = trained
    assert summary["rows_read"] == 19 and summary["examples"] == 16
    assert summary["skipped_rows"] == 3
    assert summary["skipped_by_reason"] == {
        "malformed_json": 1,
        "missing_field": 1,
        "non_string_field": 1,
    }
    assert all(m["skipped_rows"] == 3 for m in summary["metrics"])


def test_metrics_are_reported_and_written_with_the_run(trained):
    cfg, summary = trained
    rows = summary["metrics"]
    keys = {"loss", "tokens_per_s", "examples_per_s", "seconds", "elapsed_s", "step", "epoch"}
    assert keys <= set(rows[0])
    epochs = [m for m in rows if m["kind"] == "epoch"]
    # 16 rows, global batch 8: 2 optimizer steps and 16 examples per epoch over both workers.
    assert [m["step"] for m in epochs] == list(range(2, 2 * EPOCHS + 1, 2))
    assert all(m["examples"] == 16 and m["tokens_per_s"] > 0 for m in epochs)
    # Peak memory is the largest worker's RSS (a torch process: well over 100 MiB); no GPU.
    assert all(m["peak_rss_mib"] > 100 and m["peak_gpu_mib"] is None for m in epochs)
    assert summary["peak_rss_mib"] == max(m["peak_rss_mib"] for m in epochs)
    assert [m["step"] for m in rows if m["kind"] == "step"] == [m["step"] for m in epochs]
    run = Path(summary["run_dir"])
    written = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert written == rows
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == EPOCHS


def test_checkpoint_and_export_load_and_generate(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpagasus_ray.text.prompts import alpaca_prompt

    _, summary = trained
    checkpoint = Path(summary["checkpoint"])
    # Trainer's checkpoint, merged from both workers (each one's RNG state), and the history.
    names = {p.name for p in checkpoint.iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= names
    assert {"rng_state_0.pth", "rng_state_1.pth", "metrics.jsonl"} <= names
    # Checkpoints at each epoch's end and every 3 steps; the newest 2 are kept.
    kept = sorted(p for p in checkpoint.parent.glob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2 and kept[-1] == checkpoint
    assert registered_steps(checkpoint.parent) == [2 * EPOCHS - 2, 2 * EPOCHS]  # 10, 12
    model = AutoModelForCausalLM.from_pretrained(summary["export"])
    tok = AutoTokenizer.from_pretrained(summary["export"])
    ids = tok(alpaca_prompt("Add the two numbers.", "2 and 3"), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id
        )
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_rerun_resumes_from_the_checkpoint(trained):
    cfg, first = trained
    more = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": EPOCHS + 2})})
    second = run_train(more)
    assert second["resumed_from_epoch"] == EPOCHS
    assert second["resumed_from_step"] == 2 * EPOCHS
    new = [m for m in second["metrics"] if m["resumed_from_step"] == 2 * EPOCHS]
    assert [m["epoch"] for m in new if m["kind"] == "epoch"] == [EPOCHS, EPOCHS + 1]
    assert max(m["step"] for m in new) == 2 * EPOCHS + 4
    # The history before the resume travels with the checkpoint.
    assert second["metrics"][: len(first["metrics"])] == first["metrics"]
    # The resumed model starts from the trained one, not from scratch.
    first_epoch_loss = next(m["loss"] for m in first["metrics"] if m["kind"] == "epoch")
    assert new[0]["loss"] < 0.5 * first_epoch_loss


def registered_steps(run: Path) -> list[int]:
    """The steps of the checkpoints Ray Train has registered for `run` (its own record)."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or mid-write
        return []
    return [r["metrics"]["step"] for r in snapshot["checkpoint_results"]]


def weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    return max((left[k] - right[k]).abs().max().item() for k in left)


def test_a_driver_killed_mid_epoch_resumes_there_and_ends_as_if_never_killed(trained, tmp_path):
    """The driver SIGKILLed after the checkpoint of step 9, mid-epoch (an epoch is 2 steps;
    checkpoints at each epoch's end and every 3 steps: 2, 3, 4, 6, 8, 9, the sixth). The
    workers are held right after it, so the kill lands there on a machine of any speed.
    The rerun resumes at step 9 and ends with the same step count and the same weights:
    each worker's rows are a fixed shard of the tokenized cache, shuffled with a seed per
    epoch, so the resumed epoch replays the same batches and skips the one already trained
    on; weights, optimizer, schedule and RNG states come back from the checkpoint as saved."""
    import ray

    cfg, uninterrupted = trained
    run = cfg.run.model_copy(update={"storage_path": str(tmp_path / "runs")})
    killed = cfg.model_copy(update={"run": run})
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(killed.model_dump(mode="json", exclude_none=True)))
    hold = "workers-hold-after:train.reporting.RunReporter.on_save#6"
    here, log = Path(__file__).parent, tmp_path / "killed.log"
    proc = subprocess.Popen(
        [sys.executable, str(here / "crash_driver.py"), hold, "train", "--config", str(config)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env={**session_cluster_env(), "PYTHONPATH": str(here.parent)},
    )
    run_folder = tmp_path / "runs" / cfg.run.name
    try:
        deadline = time.monotonic() + 900  # a few seconds when quiet
        while 9 not in registered_steps(run_folder):
            assert proc.poll() is None, f"ended before step 9: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, registered_steps(run_folder)
            time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert registered_steps(run_folder) == [8, 9]
    # Ray ends the killed driver's job and frees its workers' CPUs for the rerun.
    deadline = time.monotonic() + 300
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(1)

    resumed = run_train(killed)
    assert (resumed["resumed_from_epoch"], resumed["resumed_from_step"]) == (4, 9)
    assert resumed["steps"] == uninterrupted["steps"] == 2 * EPOCHS
    # The history before the kill came back with the checkpoint; after it, the rest.
    steps = [m["step"] for m in resumed["metrics"] if m["kind"] == "epoch"]
    assert steps == list(range(2, 2 * EPOCHS + 1, 2))
    difference = weight_difference(Path(resumed["export"]), uninterrupted["uninterrupted"])
    print(f"killed at step 9, resumed from step 9, final steps {resumed['steps']}, "
          f"largest weight difference {difference:.3g}")  # fmt: skip
    assert difference <= 1e-6


def test_config_rejects_a_global_batch_the_workers_cannot_split(tiny_judge, tmp_path):
    with pytest.raises(ConfigError, match="multiple"):
        train_config("x.jsonl", tiny_judge, tmp_path, global_batch_size=6)


def test_local_paths_are_made_absolute_for_the_workers(tiny_judge, tmp_path, monkeypatch):
    # Ray Train workers run in their own directory, where relative paths point elsewhere.
    monkeypatch.chdir(tiny_judge.parent)
    cfg = train_config("data/in.jsonl", tiny_judge.name, "runs")
    assert cfg.data.uri == str(tiny_judge.parent / "data" / "in.jsonl")
    assert cfg.model.name == str(tiny_judge)
    assert cfg.run.storage_path == str(tiny_judge.parent / "runs")
    hub = train_config("s3://b/out", "org/not-a-local-dir", "s3://b/runs")
    assert (hub.data.uri, hub.model.name) == ("s3://b/out", "org/not-a-local-dir")


def test_example_train_config_validates():
    from alpagasus_ray.core.config import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "jobs" / "configs" / "train.yaml", model=TrainConfig)
    assert cfg.train.learning_rate == 2e-5 and cfg.train.global_batch_size == 128
    assert cfg.run.storage_path.startswith("s3://")


def test_cli_train_reports_a_config_error(capsys):
    from alpagasus_ray.cli import main

    root = Path(__file__).resolve().parents[1]
    config = str(root / "jobs" / "configs" / "train.yaml")
    assert main(["train", "--config", config, "--set", "train.global_batch_size=100"]) == 2
    assert "multiple" in capsys.readouterr().err


def test_an_unfinished_filter_output_is_refused(ray_session, tiny_judge, tmp_path, monkeypatch):
    """A filter run killed before its manifest leaves kept and rejected rows behind:
    training on them would be silently wrong, so `train` refuses at once."""
    from alpagasus_ray.data.io import UnfinishedFilterOutput
    from alpagasus_ray.train.data import kept_input

    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(12, seed=2))
    out = tmp_path / "filtered"
    run_filter(job_config(str(src), str(out), tiny_judge, filter__threshold=2.0))
    cfg = train_config(str(out), tiny_judge, tmp_path / "runs")
    files = kept_input(cfg)[1].files  # finished: the kept files its manifest lists
    assert files and all("/data/decision=kept/" in f for f in files)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"complete"', '"inconsistent"'))
    with pytest.raises(UnfinishedFilterOutput, match="'inconsistent'"):
        kept_input(cfg)
    manifest.unlink()  # as a killed run leaves it
    with pytest.raises(UnfinishedFilterOutput, match="without manifest.json"):
        kept_input(cfg)

    def no_ray(*_: object) -> None:
        raise AssertionError("Ray was started before the refusal")

    monkeypatch.setattr("alpagasus_ray.core.runtime.init_ray", no_ray)
    with pytest.raises(UnfinishedFilterOutput, match="without manifest.json"):
        run_train(cfg)


def test_a_folder_that_is_not_a_filter_output_is_refused_before_ray(
    tiny_judge, tmp_path, capsys, monkeypatch
):
    """Someone else's Parquet files: one line naming the folder and why, before Ray starts
    (it used to fail after Ray counted "0 trainable rows")."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), theirs / "part-0.parquet")
    cfg = train_config(str(theirs), tiny_judge, tmp_path / "runs")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))

    def no_ray(*_: object) -> None:
        raise AssertionError("Ray was started before the refusal")

    monkeypatch.setattr("alpagasus_ray.core.runtime.init_ray", no_ray)
    line, _ = cli_refusal(capsys, ["train", "--config", str(config)])
    assert line == (
        f"alpagasus-ray train: training data (data.uri): {theirs} is not a filter output (no "
        "manifest.json), and its rows cannot be trained on as they are: no column "
        f"'instruction' in {theirs}/part-0.parquet; its columns are: a, b"
    )
