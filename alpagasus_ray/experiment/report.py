"""The experiment's report: the rows each model was trained on, each model's training time and
steps, the pairwise outcome per test set in both answer orders with its position bias, the
paper's figures beside them, and where each step's own output is.

`experiment.md` is written first and `experiment.json` last: the JSON is the experiment's
commit, so a reader that finds it finds every step finished.
"""

from __future__ import annotations

from typing import Any

from alpagasus_ray.data.io import filesystem, join, write_atomic, write_json
from alpagasus_ray.experiment.config import MODELS, ExperimentConfig
from alpagasus_ray.filter.manifest import Manifest

REPORT_MD, RECORD_JSON = "experiment.md", "experiment.json"

# The paper's own result (arXiv 2307.08701), for reference beside a user's.
PAPER = {
    "rows": "Alpaca's 52k rows rated by ChatGPT; about 9k (score >= 4.5) kept",
    "training": "14 minutes on the kept rows against 80 on all of them (7B)",
    "outcome": "the model tuned on the kept rows beats the one tuned on all rows on each of "
    "the four test sets (winning score above 1), judged by GPT-4 in both orders",
}

_TRAINED = ("examples", "skipped_rows", "epochs_done", "steps", "train_seconds", "wall_seconds",
            "first_epoch_loss", "last_epoch_loss", "export", "run_dir", "ran")  # fmt: skip


def experiment_record(
    cfg: ExperimentConfig,
    manifest: Manifest,
    trained: dict[str, dict[str, Any]],
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """What the experiment found, as the JSON it commits."""
    counts = manifest.counts
    models = {name: {k: s.get(k) for k in _TRAINED} for name, s in trained.items()}
    for name, decisions in MODELS.items():
        models[name]["decisions"] = decisions
    seconds = [models[m]["train_seconds"] for m in MODELS]
    return {
        "status": "complete",
        "experiment": cfg.experiment.uri,
        "note": cfg.experiment.note,
        "rows": {
            "read": manifest.rows_read,
            **counts,
            "left_out_of_both": counts.get("quarantined", 0) + counts.get("failed", 0),
        },
        "filter": {
            "output": cfg.output.uri,
            "threshold": manifest.threshold,
            "judge": manifest.judge,
            "seconds": manifest.timings_s.get("total"),
            "ran": not manifest.already_complete,
        },
        "models": models,
        "training_time_kept_over_all": seconds[0] / seconds[1] if all(seconds) else None,
        "evaluation": {
            "output": cfg.eval_config().output.uri,
            "results": evaluation["results"],
            "seconds": evaluation["timings_s"]["total"],
            "ran": evaluation["ran"],
        },
        "paper": PAPER,
    }


def _n(x: float | None, fmt: str = ".1f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _pair_rows(results: list[dict[str, Any]]) -> list[str]:
    return [
        f"| {r['model_a']} vs {r['model_b']} | {ts} | {s['questions']} | {s['win']} | {s['tie']} "
        f"| {s['lose']} | {s['unparseable']} | {_n(s['winning_score'], '.3f')} "
        f"| {_n(s['flip_rate'], '.3f')} |"
        for r in results
        for ts, s in r["test_sets"].items()
    ]


def render_experiment(record: dict[str, Any]) -> str:
    rows, models, ev = record["rows"], record["models"], record["evaluation"]
    ratio = record["training_time_kept_over_all"]
    lines = [
        "# AlpaGasus experiment: trained on the kept rows against all judged rows",
        "",
        *([f"**{record['note']}**", ""] if record["note"] else []),
        f"Rows read {rows['read']:,}: kept {rows.get('kept', 0):,}, rejected "
        f"{rows.get('rejected', 0):,}, quarantined {rows.get('quarantined', 0):,}, failed "
        f"{rows.get('failed', 0):,}. The model `kept` is trained on the kept rows, `all` on "
        f"kept and rejected; the {rows['left_out_of_both']:,} quarantined and failed rows are "
        f"in neither. Filter threshold {record['filter']['threshold']}.",
        "",
        "| model | rows trained | epochs | steps | training s | wall s | loss first -> last |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, m in models.items():
        lines.append(
            f"| {name} | {m['examples']:,} | {m['epochs_done']} | {m['steps']} "
            f"| {_n(m['train_seconds'])} | {_n(m['wall_seconds'])} "
            f"| {_n(m['first_epoch_loss'], '.4f')} -> {_n(m['last_epoch_loss'], '.4f')} |"
        )
    lines += [
        "",
        f"Training time, kept over all: {_n(ratio, '.2f')}.",
        "",
        "Pairwise, for model A: each question judged in both answer orders (the evaluation's "
        "report.md says how outcomes and the winning score are counted; above 1: A better).",
        "",
        "| A vs B | test set | questions | win | tie | lose | unparseable | winning score "
        "| flip rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *_pair_rows(ev["results"]),
        "",
        "## The paper, for reference",
        "",
        *(f"- {k}: {v}" for k, v in record["paper"].items()),
        "",
        "## Each step's own output",
        "",
        "| step | output | s | run this time |",
        "|---|---|---:|---|",
        f"| filter | {record['filter']['output']} (report.md) | {_n(record['filter']['seconds'])} "
        f"| {'yes' if record['filter']['ran'] else 'no: finished before'} |",
    ]
    for name, m in models.items():
        ran = "yes" if m["ran"] else "no: finished before"
        lines.append(f"| train {name} | {m['run_dir']} | {_n(m['wall_seconds'])} | {ran} |")
    ran = "yes" if ev["ran"] else "no: finished before"
    lines.append(f"| evaluation | {ev['output']} (report.md) | {_n(ev['seconds'])} | {ran} |")
    return "\n".join(lines) + "\n"


def write_experiment_report(
    cfg: ExperimentConfig,
    manifest: Manifest,
    trained: dict[str, dict[str, Any]],
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """experiment.md, then experiment.json (the commit); returns the record."""
    record = experiment_record(cfg, manifest, trained, evaluation)
    fs, root = filesystem(cfg.experiment.uri, cfg.storage)
    write_atomic(fs, join(root, REPORT_MD), render_experiment(record).encode())
    write_json(fs, join(root, RECORD_JSON), record)
    return record
