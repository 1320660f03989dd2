"""The paper's evaluation as Ray Data jobs: answers -> pairwise judgements -> outcomes.

1. Every test set is read as it is stored and normalised to (test_set, question_id,
   instruction, input, question) (`questions.py`); each model answers with the Alpaca
   template, one prompt -> generate -> finish chain per model (`generate.py`,
   `answers.py`), written to `answers/`.
2. Each pair of models is judged on every question in both orders with the paper's pairwise
   prompt, written to `judgments/` with the judge's raw text.
3. The driver combines the (small) judgement table into per-question outcomes
   (`outcomes.py`) and the report (`report.py`). The rule is in `pairwise.py` and
   docs/evaluation.md.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.data.io import (
    claim_output,
    filesystem,
    join,
    parquet_dataset,
    prepare_output,
    write_json,
)
from alpagasus_ray.evaluate.answers import FinishAnswers, PairRequests
from alpagasus_ray.evaluate.config import EvalConfig
from alpagasus_ray.evaluate.generate import generate
from alpagasus_ray.evaluate.outcomes import combine_judgments, finish_judgments
from alpagasus_ray.evaluate.questions import read_questions

ANSWERS, JUDGMENTS, OUTCOMES_FILE = "answers", "judgments", "outcomes.parquet"


def check_models(cfg: EvalConfig) -> None:
    """Before Ray starts: API engines answer one cheap call (key, URL, model served), and a
    model told to answer through its chat template has one."""
    from alpagasus_ray.filter.preflight import PreflightError, check_api
    from alpagasus_ray.text.models import load_tokenizer

    if cfg.judge.engine == "openai":
        check_api(cfg.judge)
    for i, m in enumerate(cfg.models):
        model = cfg.generation.judge_config(m)
        if model.engine == "openai":
            check_api(model, f"models.{i}" if m.api else "generation", f"models.{i}.path")
        name = model.tokenizer_name()
        if m.template != "chat" or not name:
            continue  # an API model without a tokenizer: its server applies its template
        if not getattr(load_tokenizer(name, model.trust_remote_code), "chat_template", None):
            cause = f"{name} has no chat template; use template: alpaca for this model"
            raise PreflightError("model template", f"models.{i}.template", cause)


def stop_if_over_budget(budgets: list[tuple[JudgeConfig, Any]], key: str, folder: str) -> None:
    """An API engine's cost cap ends the evaluation after the step it cut short, without a
    manifest: its unsent rows are error rows in `folder`, and an outcome over them would be
    wrong. (Each model's answers and the judge have a cap of their own.)"""
    then = "rerun with a higher max_cost and output.overwrite"
    for cfg, api in budgets:
        if api is not None:
            api.stop_if_over_budget(cfg.api, key, f"error rows in {folder}/", then)


def run_evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Answers, judgements, outcomes and report; returns the manifest (written last)."""
    import ray.data

    from alpagasus_ray.core.runtime import init_ray, package_versions
    from alpagasus_ray.evaluate.report import write_eval_report

    check_models(cfg)
    init_ray(cfg.ray)
    fs, root = filesystem(cfg.output.uri, cfg.storage)
    prepare_output(fs, root, cfg.output.overwrite)
    claim_output(fs, root, {"command": "evaluate"})  # ours: `overwrite` may replace it
    light = cfg.ray.task_cpus
    started = time.time()

    ds, budgets = read_questions(cfg), []
    for m in cfg.models:
        model = cfg.generation.judge_config(m)
        ds, api = generate(ds, model, "answer", light)
        budgets.append((model, api))
        ds = ds.map_batches(FinishAnswers(m.name), batch_format="pyarrow", num_cpus=light)
    ds.write_parquet(join(root, ANSWERS), filesystem=fs, ray_remote_args={"num_cpus": light})
    stop_if_over_budget(budgets, "generation.api.max_cost", ANSWERS)  # judge no cut answers
    answered = time.time()

    pairs = cfg.model_pairs()
    ds = ray.data.read_parquet(join(root, ANSWERS), filesystem=fs, num_cpus=light)
    ds = ds.map_batches(PairRequests(pairs), batch_format="pyarrow", num_cpus=light)
    ds, api = generate(ds, cfg.judge, "judge", light)
    ds = ds.map_batches(finish_judgments, batch_format="pyarrow", num_cpus=light)
    ds.write_parquet(join(root, JUDGMENTS), filesystem=fs, ray_remote_args={"num_cpus": light})
    stop_if_over_budget([(cfg.judge, api)], "judge.api.max_cost", JUDGMENTS)
    judged = time.time()

    answers = parquet_dataset(fs, join(root, ANSWERS)).to_table()
    judgments = parquet_dataset(fs, join(root, JUDGMENTS)).to_table()
    questions_read = read_questions(cfg).count()
    outcomes, checks = combine_judgments(judgments, pairs, questions_read)
    checks["questions_read"], checks["questions_answered"] = questions_read, answers.num_rows
    checks["ok"] = checks["ok"] and answers.num_rows == questions_read
    with fs.open(join(root, OUTCOMES_FILE), "wb") as f:
        pq.write_table(outcomes, f)
    set_order = [t.name for t in cfg.all_test_sets()]
    report = write_eval_report(fs, root, outcomes, judgments, pairs, set_order)
    manifest = {
        "status": "complete" if checks["ok"] else "inconsistent",
        "checks": checks,
        "questions": answers.num_rows,
        "judgments": judgments.num_rows,
        "pairs": [list(p) for p in pairs],
        "results": report["results"],
        "timings_s": {
            "answers": round(answered - started, 3),
            "judgments": round(judged - answered, 3),
            "total": round(time.time() - started, 3),
        },
        "versions": package_versions(),
        "config": cfg.model_dump(mode="json"),
    }
    write_json(fs, join(root, "manifest.json"), manifest)
    if not checks["ok"]:
        raise RuntimeError(f"evaluation output is inconsistent: {checks}")
    return manifest
