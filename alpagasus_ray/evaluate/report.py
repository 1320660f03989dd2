"""The evaluation report, from the outcomes (`outcomes.py`) and the written judgements alone:
win / tie / lose and winning score per pair and test set as a table, the paper-style
win/tie/lose chart per pair (one bar per test set), and the position-bias chart (how often
swapping the answer order changes the verdict)."""

from __future__ import annotations

import io as _io
from collections import Counter
from typing import Any

import pyarrow as pa

from alpagasus_ray.data.io import join, write_bytes, write_json
from alpagasus_ray.evaluate.pairwise import OUTCOMES, count_outcomes, winning_score

REPORT_JSON, REPORT_MD, BIAS_PNG = "report.json", "report.md", "position_bias.png"
COLORS = {"win": "#55a868", "tie": "#dd8452", "lose": "#c44e52", "unparseable": "#8c8c8c"}


def chart_name(a: str, b: str) -> str:
    return f"winloss_{a}_vs_{b}.png"


def _summary(rows: list[dict[str, Any]], statuses: Counter) -> dict[str, Any]:
    counts = count_outcomes(r["outcome"] for r in rows)
    judged = counts["win"] + counts["tie"] + counts["lose"]
    flips = [r["flipped"] for r in rows if r["flipped"] is not None]
    reversed_ = sum(1 for r in rows if {r["verdict_ab"], r["verdict_ba"]} == {"win", "lose"})
    first_pref = sum(1 for r in rows if r["verdict_ab"] == "win" and r["verdict_ba"] == "lose")
    return {
        "questions": len(rows),
        **counts,
        "judged": judged,
        "winning_score": winning_score(counts["win"], counts["lose"], judged),
        "judgments": dict(statuses),
        "both_orders_readable": len(flips),
        "flipped": sum(flips),
        "flip_rate": sum(flips) / len(flips) if flips else None,
        "reversed": reversed_,
        "first_position_won_both": first_pref,
    }


def compute_results(
    outcomes: pa.Table,
    judgments: pa.Table,
    pairs: list[tuple[str, str]],
    set_order: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Per pair, per test set (in `set_order`, then any others) and over all of them."""
    rows = outcomes.to_pylist()
    order = list(set_order or [])
    jrows = judgments.select(["test_set", "model_a", "model_b", "status"]).to_pylist()
    results = []
    for a, b in pairs:
        mine = [r for r in rows if (r["model_a"], r["model_b"]) == (a, b)]
        seen = {r["test_set"] for r in mine}
        sets = [t for t in order if t in seen] + sorted(seen - set(order))
        per_set = {}
        for ts in [*sets, "all"]:
            sel = [r for r in mine if ts in ("all", r["test_set"])]
            st = Counter(
                j["status"]
                for j in jrows
                if (j["model_a"], j["model_b"]) == (a, b) and ts in ("all", j["test_set"])
            )
            per_set[ts] = _summary(sel, st)
        results.append({"model_a": a, "model_b": b, "test_sets": per_set})
    return results


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render_markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "# AlpaGasus pairwise evaluation",
        "",
        "Outcome for model A per question, judged in both orders: win = wins both or wins one "
        "and ties one; lose = the mirror; tie = ties both or wins one and loses one; "
        "unparseable = a judgement in either order was unreadable or failed (never a tie). "
        "Winning score = (win - lose) / (win + tie + lose) + 1. Flip rate = share of questions "
        "(readable in both orders) whose verdict changed when the order was swapped.",
        "",
        "| A vs B | test set | questions | win | tie | lose | unparseable | winning score "
        "| flip rate | judgements ok / unparseable / error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in results:
        pair = f"{res['model_a']} vs {res['model_b']}"
        for ts, s in res["test_sets"].items():
            j = s["judgments"]
            lines.append(
                f"| {pair} | {ts} | {s['questions']} | {s['win']} | {s['tie']} | {s['lose']} "
                f"| {s['unparseable']} | {_fmt(s['winning_score'])} | {_fmt(s['flip_rate'])} "
                f"| {j.get('ok', 0)} / {j.get('unparseable', 0)} / {j.get('error', 0)} |"
            )
    lines.append("")
    for res in results:
        name = chart_name(res["model_a"], res["model_b"])
        lines.append(f"![{res['model_a']} vs {res['model_b']}]({name})")
    lines.append(f"![position bias]({BIAS_PNG})")
    return "\n".join(lines) + "\n"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return buf.getvalue()


def winloss_png(res: dict[str, Any]) -> bytes:
    """The paper's figure: one horizontal bar per test set, win / tie / lose (+ unparseable)."""
    plt = _plt()
    sets = [ts for ts in res["test_sets"] if ts != "all"]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(sets) + 1.6), dpi=120)
    left = [0] * len(sets)
    for outcome in OUTCOMES:
        vals = [res["test_sets"][ts][outcome] for ts in sets]
        bars = ax.barh(sets, vals, left=left, color=COLORS[outcome], label=outcome)
        for bar, v in zip(bars, vals, strict=True):
            if v:
                x = bar.get_x() + bar.get_width() / 2
                ax.text(x, bar.get_y() + bar.get_height() / 2, str(v), ha="center", va="center")
        left = [lft + v for lft, v in zip(left, vals, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("questions")
    ax.set_title(f"{res['model_a']} vs {res['model_b']} (outcome for {res['model_a']})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    return _png(fig)


def position_bias_png(results: list[dict[str, Any]]) -> bytes:
    """Per pair and test set: share of questions whose verdict flipped with the order."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    labels, rev, part, readable = [], [], [], []
    for res in results:
        for ts, s in res["test_sets"].items():
            n = s["both_orders_readable"]
            labels.append(f"{ts}\n{res['model_a']}/{res['model_b']}" if len(results) > 1 else ts)
            rev.append(s["reversed"] / n if n else 0.0)
            part.append((s["flipped"] - s["reversed"]) / n if n else 0.0)
            readable.append(n)
    x = list(range(len(labels)))
    for xi, n in zip(x, readable, strict=True):
        ax.text(xi, 0.02, f"n={n}" if n else "n=0\n(none readable)", ha="center", fontsize=7)
    ax.bar(x, rev, color="#c44e52", label="win <-> lose")
    ax.bar(x, part, bottom=rev, color="#dd8452", label="to or from a tie")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("verdict flipped when order swapped")
    ax.set_title("Position bias (questions readable in both orders)")
    ax.legend()
    return _png(fig)


def write_eval_report(
    fs: Any,
    root: str,
    outcomes: pa.Table,
    judgments: pa.Table,
    pairs: list[tuple[str, str]],
    set_order: list[str] | None = None,
) -> dict[str, Any]:
    results = compute_results(outcomes, judgments, pairs, set_order)
    report = {"results": results}
    write_json(fs, join(root, REPORT_JSON), report)
    with fs.open(join(root, REPORT_MD), "w") as f:
        f.write(render_markdown(results))
    for res in results:
        write_bytes(fs, join(root, chart_name(res["model_a"], res["model_b"])), winloss_png(res))
    write_bytes(fs, join(root, BIAS_PNG), position_bias_png(results))
    return report
