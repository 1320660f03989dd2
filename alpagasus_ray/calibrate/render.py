"""The calibration's report for people: a short Markdown page and one figure (the ROC
curve, and the score histograms of the rows the reference keeps and drops)."""

from __future__ import annotations

from typing import Any

import numpy as np

from alpagasus_ray.calibrate.metrics import roc_curve
from alpagasus_ray.filter.report import figure_png
from alpagasus_ray.text.rubrics import PAPER_SCALE


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"  # NaN: undefined (one class only)


def _ci(pair: tuple[float, float]) -> str:
    return f"[{_f(pair[0])}, {_f(pair[1])}]"


def summary_line(result: dict[str, Any], to: str) -> str:
    low, high = result["roc_auc_ci95"]
    job = result["at_job_threshold"]
    return (
        f"{result['rows_compared']} rows compared: ROC AUC {_f(result['roc_auc'])} "
        f"[{_f(low)}, {_f(high)}]; at threshold {job['threshold']:g} the judge keeps "
        f"{job['keep_rate']:.1%}, the reference {job['reference_keep_rate']:.1%}, "
        f"precision {_f(job['precision'])}, recall {_f(job['recall'])}; report in {to}"
    )


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Judge calibration",
        "",
        f"Output `{result['output']}`"
        + (f", criterion `{result['criterion']}`," if result.get("criterion") else "")
        + f" against `{result['labels']}` (label `{result['label']}`):"
        f" {result['rows_compared']} rows compared ({result['not_scored']} not scored, "
        f"{result['not_labelled']} without a label).",
        "",
        "| figure | value | 95% bootstrap interval |",
        "|---|---:|---|",
        f"| ROC AUC (0.5 = chance) | {_f(result['roc_auc'])} | {_ci(result['roc_auc_ci95'])} |",
    ]
    if "spearman" in result:
        lines.append(f"| Spearman | {_f(result['spearman'])} | {_ci(result['spearman_ci95'])} |")
    lines += ["", "| | at the job's threshold | at the threshold matching the reference's rate |",
              "|---|---:|---:|"]  # fmt: skip
    job, matched = result["at_job_threshold"], result["at_matching_threshold"]
    for name in ("threshold", "keep_rate", "reference_keep_rate", "precision", "recall",
                 "agreement"):  # fmt: skip
        lines.append(f"| {name} | {_f(job[name])} | {_f(matched[name])} |")
    for name in job["confusion"]:
        lines.append(f"| {name} | {job['confusion'][name]} | {matched['confusion'][name]} |")
    lines += [
        "",
        "Precision: of the rows the judge keeps, the share the reference keeps; recall: of "
        "the rows the reference keeps, the share the judge keeps.",
        "",
        "![ROC curve and score histograms](calibration.png)",
        "",
    ]
    return "\n".join(lines)


def plot(scores: np.ndarray, labels: np.ndarray, result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc, hist) = plt.subplots(1, 2, figsize=(10, 4))
    fpr, tpr = roc_curve(scores, labels)
    roc.plot(fpr, tpr, label=f"judge (AUC {_f(result['roc_auc'])})")
    roc.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    roc.legend(loc="lower right")
    lo, hi = result.get("scale") or PAPER_SCALE  # the judge's scale
    bins = np.linspace(lo, hi, 26)
    # Shares, not counts: the reference keeps a small part, whose shape must still show.
    for part, name in ((labels, "reference keeps"), (~labels, "reference drops")):
        if part.any():
            hist.hist(scores[part], bins=bins, alpha=0.6, density=True, label=name)
    hist.axvline(result["at_job_threshold"]["threshold"], color="black", linestyle=":")
    hist.set(xlabel="judge score", ylabel="density", title="scores by reference label")
    hist.legend()
    return figure_png(fig)
