"""`alpagasus-ray experiment`: filter, train on the kept rows and on all judged rows, judge the
two pairwise, one report; a killed run goes on from its first unfinished step. Also the test
sets shipped with the package, which the evaluation reads by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import job_data, session_cluster_env
from helpers import TINY_TRAIN
from test_commit import killed_at

from alpagasus_ray.core.config import ConfigError, build_config, load_config
from alpagasus_ray.evaluate.config import PAPER_TEST_SETS, EvalConfig, packaged_test_sets
from alpagasus_ray.experiment.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]


def experiment_data(source: str, root: str, model, **evaluation) -> dict:
    data = job_data(source, "unused", model)
    del data["output"]  # the experiment lays it out: <root>/filter
    return {
        **data,
        "experiment": {"uri": root},
        "finetune": {
            "model": {"name": str(model)},
            "train": dict(TINY_TRAIN),
            "run": {"num_workers": 2},
        },
        "evaluation": {
            "judge": {
                "model": str(model),
                "max_new_tokens": 16,
                "batch_size": 8,
                "num_cpus_per_replica": 0.5,
            },
            "generation": {"max_new_tokens": 16, "batch_size": 8, "num_cpus_per_replica": 0.5},
            **evaluation,
        },
    }


def test_the_experiment_lays_its_steps_out_in_one_folder(tmp_path):
    cfg = build_config(ExperimentConfig, experiment_data("in.jsonl", str(tmp_path / "x"), "m"))
    root = str(tmp_path / "x")
    assert cfg.output.uri == f"{root}/filter" and cfg.finetune.data.uri == f"{root}/filter"
    kept, every = cfg.train_config("kept"), cfg.train_config("all")
    assert (kept.data.decisions, every.data.decisions) == (["kept"], ["kept", "rejected"])
    assert kept.train == every.train and kept.model == every.model  # one recipe, one seed
    ev = cfg.eval_config()
    assert [(m.name, m.path) for m in ev.models] == [
        ("kept", f"{root}/train/kept/export"),
        ("all", f"{root}/train/all/export"),
    ]
    assert ev.model_pairs() == [("kept", "all")] and ev.output.uri == f"{root}/evaluation"
    base = {"name": "base", "path": "m"}
    ev = build_config(
        ExperimentConfig, experiment_data("in.jsonl", root, "m", models=[base])
    ).eval_config()
    assert ev.model_pairs() == [("kept", "all"), ("kept", "base")]


@pytest.mark.parametrize(
    "change, refusal",
    [
        (lambda d: d["finetune"]["run"].update(storage_path="/x"), "finetune.run.storage_path"),
        (lambda d: d["finetune"]["run"].update(name="sft"), "finetune.run.name"),
        (lambda d: d["experiment"].update(uri="s3://b/x"), "local or shared folder"),
        (lambda d: d["input"].update(columns={"messages": "m"}), "conversation rows"),
        (lambda d: d["evaluation"]["generation"].update(engine="openai"), "local engine"),
        (lambda d: d["evaluation"].update(models=[{"name": "kept", "path": "m"}]), "unique"),
        (lambda d: d["evaluation"].update(pairs=[["kept", "nobody"]]), "pair [kept, nobody]"),
        (lambda d: d["judge"].update(engine="hash"), "allow_stand_in_judge"),
        (lambda d: d.update(output={"overwrite": True}), "never redoes a finished step"),
    ],
)
def test_a_wrong_experiment_config_is_one_line(change, refusal, tmp_path):
    data = experiment_data("in.jsonl", str(tmp_path / "x"), "m")
    change(data)
    with pytest.raises(ConfigError, match="invalid configuration") as e:
        build_config(ExperimentConfig, data)
    assert refusal in str(e.value) and "\n" not in str(e.value)


def test_example_experiment_config_validates():
    cfg = load_config(ROOT / "jobs" / "configs" / "experiment.yaml", model=ExperimentConfig)
    assert cfg.judge.engine == "vllm" and cfg.evaluation.generation.engine == "vllm"
    assert [m.name for m in cfg.eval_config().models] == ["kept", "all", "base"]


def test_the_four_test_sets_ship_with_the_package(shared_data):
    cfg = build_config(EvalConfig, {"models": [{"name": "a", "path": "a"},
                                               {"name": "b", "path": "b"}],
                                    "judge": {"model": "j"}, "output": {"uri": "o"}})  # fmt: skip
    assert cfg.data_dir is None
    for t in cfg.test_sets:  # the package's copies, byte for byte the paper's sets
        shipped = Path(cfg.test_set_uri(t))
        assert shipped.parent == Path(packaged_test_sets())
        assert shipped.read_bytes() == (shared_data / t.path).read_bytes()


@pytest.mark.slow
def test_an_installed_wheel_finds_its_test_sets(tmp_path):
    """Built as users install it: a wheel, in a fresh virtualenv of its own, not the source
    tree (the dependencies come from this one's site-packages, which holds no copy of the
    package: its own install here is editable, a finder pointing at the source)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "alpagasus_ray"), str(src)], check=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, timeout=600)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("alpagasus_ray-*.whl"))
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True,
                   timeout=600)  # fmt: skip
    python = fresh / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    subprocess.run([*pip, "install", "--no-deps", "--target", site, str(wheel)], check=True,
                   timeout=600)  # fmt: skip
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    probe = (
        "import json, pathlib, alpagasus_ray.evaluate.config as c\n"
        "sets = [pathlib.Path(c.packaged_test_sets(), t['path']) for t in c.PAPER_TEST_SETS]\n"
        "print(json.dumps([c.__file__, [len(p.read_text().splitlines()) for p in sets]]))\n"
    )
    proc = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": deps}, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, lines = json.loads(proc.stdout)
    assert module.startswith(site)  # the wheel's copy in the fresh virtualenv
    assert lines == [80, 180, 218, 252] and len(PAPER_TEST_SETS) == 4


def run_experiment_cli(config: Path | None, *extra: str) -> subprocess.CompletedProcess:
    """`experiment --config CONFIG EXTRA...`, or without a config the command EXTRA."""
    cmd = [sys.executable, "-m", "alpagasus_ray.cli"]
    cmd += ["experiment", "--config", str(config), *extra] if config else list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**session_cluster_env(), "PYTHONPATH": str(ROOT)})  # fmt: skip


@pytest.mark.slow
def test_a_killed_experiment_goes_on_from_its_first_unfinished_step(ray_session, tmp_path):
    """The demo's experiment, killed as a lost driver would be just after its first model was
    trained, then rerun from the config it wrote: only the second model is trained."""
    out = tmp_path / "demo"
    demo = ("--experiment", "--output", str(out), "--rows", "20")
    killed_at("after:experiment.job.run_train#1", None, *demo, command="demo")
    root, config = out / "experiment", out / "experiment.yaml"
    assert (root / "train" / "kept" / "summary.json").exists()
    assert not (root / "train" / "all").exists() and not (root / "experiment.json").exists()
    kept_summary = (root / "train" / "kept" / "summary.json").read_bytes()

    proc = run_experiment_cli(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train/kept finished before" in proc.stderr
    assert (root / "train" / "kept" / "summary.json").read_bytes() == kept_summary  # not redone
    record = json.loads((root / "experiment.json").read_text())
    manifest = json.loads((root / "filter" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert record["rows"]["read"] == manifest["rows_read"] == sum(counts.values()) == 26
    assert record["rows"]["left_out_of_both"] == counts["quarantined"] + counts["failed"] >= 5
    models = record["models"]
    assert [models["kept"]["ran"], models["all"]["ran"]] == [False, True]
    assert models["kept"]["examples"] == counts["kept"]
    assert models["all"]["examples"] == counts["kept"] + counts["rejected"]
    for name in ("kept", "all"):  # each trained on what its summary says, and exported
        summary = json.loads((root / "train" / name / "summary.json").read_text())
        assert summary["trained_on"]["decisions"] == models[name]["decisions"]
        assert summary["trained_on"]["rows"] == summary["examples"]
        assert (root / "train" / name / "export" / "config.json").exists()
    (pair,) = record["evaluation"]["results"]
    assert (pair["model_a"], pair["model_b"]) == ("kept", "all")
    assert pair["test_sets"]["all"]["questions"] == 12  # three of each shipped set
    assert record["filter"]["ran"] is False and record["evaluation"]["ran"] is True
    md = (root / "experiment.md").read_text()
    assert "| kept vs all | vicuna | 3 |" in md and "The paper, for reference" in md
    assert "its numbers mean nothing" in md.split("\n")[2]  # the demo says what it is

    # The demo again, and its config again: every step finished, nothing run, one record.
    demo_again = run_experiment_cli(None, "demo", *demo)
    assert demo_again.returncode == 0, demo_again.stderr[-3000:]
    assert "train/all finished before" in demo_again.stderr
    again = run_experiment_cli(config)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "evaluation finished before" in again.stderr
    assert json.loads((root / "experiment.json").read_text())["evaluation"] == {
        **record["evaluation"],
        "ran": False,
    }

    # Another threshold would re-decide the rows the models were trained on: refused before
    # the filter output changes, naming the step.
    before = (root / "filter" / "manifest.json").read_bytes()
    refused = run_experiment_cli(config, "--set", "filter.threshold=3.0")
    assert refused.returncode == 2
    assert "experiment step train/kept" in refused.stderr and "threshold" in refused.stderr
    assert (root / "filter" / "manifest.json").read_bytes() == before

    # A model trained again after the evaluation (its folder removed and rerun): the
    # evaluation compared the old one, so it is refused too, not reported as this one's.
    evaluated = (root / "evaluation" / "manifest.json").stat().st_mtime
    os.utime(root / "train" / "all" / "summary.json", (evaluated + 60, evaluated + 60))
    stale = run_experiment_cli(config)
    assert stale.returncode == 2 and "step evaluation" in stale.stderr
    assert "trained again since" in stale.stderr
