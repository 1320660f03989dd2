"""The paper's experiment on the user's data: filter, train one model on the kept rows and one
on every judged row with the same recipe, judge the two pairwise, write one report.

Each step is the command users already run alone, and each one's committed output says it is
done: the filter's manifest, a training run's `summary.json`, the evaluation's manifest. A
rerun of the same command goes on from the first step without one and never redoes a finished
step; a finished step whose settings or rows no longer match the config is refused by name
rather than reused (a model trained before a re-decision is not the model asked for) or
replaced (training is hours of work this run did not do).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from alpagasus_ray.data.io import MANIFEST, filesystem, join, read_json
from alpagasus_ray.evaluate.config import EvalConfig
from alpagasus_ray.evaluate.job import check_models, run_evaluate
from alpagasus_ray.experiment.config import MODELS, ExperimentConfig
from alpagasus_ray.experiment.report import write_experiment_report
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.resume import decision_settings
from alpagasus_ray.pipeline import check_enough_rows
from alpagasus_ray.train.config import run_dir
from alpagasus_ray.train.data import trained_on
from alpagasus_ray.train.job import run_train
from alpagasus_ray.train.metrics import SUMMARY_FILE

log = logging.getLogger(__name__)


class StaleStep(FileExistsError):
    """A finished step whose output no longer matches the config: refused, not redone."""


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON (tuples and lists alike)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _stale(step: str, folder: str, what: str) -> StaleStep:
    later = "" if step == "evaluation" else " (and evaluation/, which compared it)"
    return StaleStep(
        f"experiment step {step} in {folder} finished with other {what} than this config "
        f"asks for; remove that folder{later} to run the step again, or set experiment.uri "
        "to a new folder"
    )


def finished_training(cfg: ExperimentConfig, name: str) -> dict[str, Any] | None:
    """The run's summary when it finished on these rows with this recipe; None when it has
    not finished; refused when it finished on other rows or settings, or on rows the filter
    would now decide again with another threshold (checked before the filter changes them)."""
    tcfg = cfg.train_config(name)
    fs, path = filesystem(join(run_dir(tcfg), SUMMARY_FILE), tcfg.storage)
    if not fs.exists(path):
        return None
    summary, step, now = read_json(fs, path), f"train/{name}", tcfg.model_dump(mode="json")
    rows = summary.get("trained_on") or {}
    if not _same(rows.get("decided"), decision_settings(cfg)):
        raise _stale(step, run_dir(tcfg), "filter decision settings (threshold, rule)")
    if not _same(rows, trained_on(tcfg)):
        raise _stale(step, run_dir(tcfg), "rows (the filter output changed)")
    if not all(_same(summary["config"].get(k), now[k]) for k in ("model", "train")):
        raise _stale(step, run_dir(tcfg), "finetune.model or finetune.train settings")
    return summary


def train_step(cfg: ExperimentConfig, name: str) -> dict[str, Any]:
    summary = finished_training(cfg, name)
    if summary is not None:
        log.info("train/%s finished before (%s steps): not trained again", name, summary["steps"])
        return {**summary, "ran": False}
    log.info("training %s on the filter's %s rows", name, " and ".join(MODELS[name]))
    return {**run_train(cfg.train_config(name)), "ran": True}


def _trained_at(cfg: ExperimentConfig, name: str) -> float:
    """When a model's run finished: its summary's time (the experiment's folder is local,
    so the clock is this filesystem's; a model trained after an evaluation is not in it)."""
    tcfg = cfg.train_config(name)
    fs, path = filesystem(join(run_dir(tcfg), SUMMARY_FILE), tcfg.storage)
    return float(fs.info(path)["mtime"])


# What decides an evaluation's result; where it runs and its output's overwrite do not.
_EVALUATION_KEYS = tuple(k for k in EvalConfig.model_fields if k not in ("ray", "storage"))


def evaluate_step(cfg: ExperimentConfig) -> dict[str, Any]:
    """A complete evaluation with these settings, of the models trained now, is taken as it
    is; an unfinished one (no complete manifest) is this experiment's own and is run again
    from its start."""
    ecfg = cfg.eval_config()
    fs, root = filesystem(ecfg.output.uri, ecfg.storage)
    path = join(root, MANIFEST)
    if fs.exists(path) and (done := read_json(fs, path)).get("status") == "complete":
        asked = ecfg.model_dump(mode="json", include=set(_EVALUATION_KEYS))
        asked["output"].pop("overwrite")
        stored = {k: done["config"].get(k) for k in _EVALUATION_KEYS}
        stored["output"].pop("overwrite", None)
        if not _same(stored, asked):
            raise _stale("evaluation", ecfg.output.uri, "evaluation settings or models")
        if fs.info(path)["mtime"] < max(_trained_at(cfg, m) for m in MODELS):
            raise _stale("evaluation", ecfg.output.uri, "models (trained again since)")
        log.info("evaluation finished before: not run again")
        return {**done, "ran": False}
    return {**run_evaluate(cfg.eval_config(overwrite=True)), "ran": True}


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every step in turn, each resumed or taken as it is; returns the experiment's record."""
    check_models(cfg.eval_config())  # an API model or a missing chat template: now, not later
    for name in MODELS:  # a model trained on rows the filter would re-decide: before it does
        finished_training(cfg, name)
    manifest = run_filter(cfg)
    for decisions in MODELS.values():
        check_enough_rows(manifest, cfg, decisions)
    trained = {name: train_step(cfg, name) for name in MODELS}
    evaluation = evaluate_step(cfg)
    return write_experiment_report(cfg, manifest, trained, evaluation)
