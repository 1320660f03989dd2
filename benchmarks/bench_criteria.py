"""One criterion against two and three in one run (`judge.criteria`), on the real vLLM
engine (CPU build) with prefix caching, the row first (`row_first`, the default with
criteria) and the rubric first (`prefix`); prints a table.

    .venv-vllm/bin/python benchmarks/bench_criteria.py [--rows 64] [--few 8]

The first rows of the shared Alpaca sample (synthetic rows where the data folder is absent),
SmolLM2-135M-Instruct, float32, logprobs mode, one replica. Criteria, in order: the paper's
accuracy, the paper's helpfulness, and a correctness rubric of our own on 0-9. Each
configuration runs twice, on `--few` rows and on all: the difference removes replica
start-up and gives the steady wall time of the rest. "tokens computed" are the prompt tokens
vLLM did not find in its prefix cache (its own hit counters, read by the job); "extra
criterion / first" is what each criterion after the first adds, as a share of what the one
criterion run costs (steady wall time, and tokens computed). CPU numbers: they check the
path and the cache, not GPU speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.py

from helpers import export_smollm2, write_jsonl  # noqa: E402

from alpagasus_ray.demo import synthetic_examples  # noqa: E402
from alpagasus_ray.filter.config import FilterJobConfig  # noqa: E402
from alpagasus_ray.filter.job import run_filter  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_random_9k.json"
CORRECT = ("Rate how correct the answer is, from 0 (wrong) to 9 (entirely correct). Put the "
           "score alone on the first line.\n\nTask:\n{instruction}\n\nContext:\n{input}\n\n"
           "Answer:\n{output}\n\nScore (0-9), first line:")  # fmt: skip
CRITERIA = {
    "accuracy": {"rubric": "accuracy"},
    "helpfulness": {"rubric": "helpfulness"},
    "correct": {"rubric": CORRECT, "scale": [0, 9], "threshold": 5},
}


def job(
    src: Path, out: Path, model: Path, count: int, layout: str, block: int | None
) -> FilterJobConfig:
    criteria = dict(list(CRITERIA.items())[:count])
    engine = {"enforce_eager": True, **({"block_size": block} if block else {})}
    return FilterJobConfig.model_validate(
        {
            "input": {"uri": str(src)},
            "output": {"uri": str(out), "overwrite": True},
            "judge": {
                "engine": "vllm",
                "model": str(model),
                "criteria": criteria,
                "layout": layout,
                "dtype": "float32",
                "max_model_len": 4096,
                "min_score_mass": 0.0,
                "batch_size": 32,
                "num_cpus_per_replica": 1,
                "vllm": {"engine_kwargs": engine},
            },
            "filter": {"threshold": 2.5},
            "ray": {"prompt_worker_cpus": 0.25},
        }
    )


def measure(tmp: Path, model: Path, rows: list[dict], few: int, count: int,
            layout: str, block: int | None) -> dict[str, Any]:  # fmt: skip
    """Wall times on `few` and on all rows; the steady figures from the difference."""
    walls, metrics = {}, {}
    for n in (few, len(rows)):
        src = write_jsonl(tmp / f"in-{n}" / "rows.jsonl", rows[:n])
        out = tmp / f"out-{count}-{layout}-{n}"
        manifest = run_filter(job(src, out, model, count, layout, block))
        assert manifest.status == "complete", manifest.invariant
        walls[n], metrics[n] = manifest.timings_s["score_and_write"], manifest.engine_metrics
    hits = {n: m.get("prefix_cache_hit_tokens") for n, m in metrics.items()}
    queries = {n: m.get("prefix_cache_query_tokens") for n, m in metrics.items()}
    computed = {n: int(queries[n] - hits[n]) if hits[n] is not None else None for n in metrics}
    full = metrics[len(rows)]
    return {
        "prompt tokens": full["input_tokens"],
        "tokens computed": computed[len(rows)],
        "steady tokens": None if computed[few] is None else computed[len(rows)] - computed[few],
        "hit rate": full.get("prefix_cache_hit_rate"),
        "wall s": walls[len(rows)],
        "steady s": walls[len(rows)] - walls[few],
    }


def _n(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--few", type=int, default=8, help="rows of the start-up run")
    parser.add_argument("--layouts", nargs="*", default=["row_first", "prefix"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--block-size", type=int, help="KV cache block (default: vLLM's)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import ray

    tmp = Path(tempfile.mkdtemp())
    model = export_smollm2(tmp / "smollm2")
    if args.data.exists():
        rows, source = json.loads(args.data.read_text())[: args.rows], args.data.name
    else:
        rows, source = synthetic_examples(args.rows, seed=0, unique=True), "synthetic rows"
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    block = args.block_size
    warm = write_jsonl(tmp / "warm" / "rows.jsonl", rows[: args.few])  # first-run costs
    run_filter(job(warm, tmp / "warm-out", model, 1, args.layouts[0], block))
    print(f"SmolLM2-135M-Instruct on vLLM (CPU), float32, logprobs, prefix caching; {source}; "
          f"{args.rows} rows per run, start-up run {args.few}; KV blocks of "
          f"{block or 'the default'} tokens")  # fmt: skip
    print()
    print("| layout | criteria | prompt tokens | tokens computed | prefix-cache hit rate | "
          "steady wall s | extra criterion / first (wall) | extra criterion / first "
          "(tokens computed) | wall s (with start-up) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for layout in args.layouts:
        found: dict[int, dict[str, Any]] = {}
        for count in (1, 2, 3):
            r = found[count] = measure(tmp, model, rows, args.few, count, layout, block)
            one = found[1]
            extra_wall = extra_tokens = None
            if count > 1 and one["steady s"] > 0:
                extra_wall = (r["steady s"] - one["steady s"]) / (count - 1) / one["steady s"]
            if count > 1 and r["steady tokens"] is not None and one["steady tokens"]:
                extra = (r["steady tokens"] - one["steady tokens"]) / (count - 1)
                extra_tokens = extra / one["steady tokens"]
            print(f"| {layout} | {count} | {r['prompt tokens']:,} | "
                  f"{_n(r['tokens computed'], ',')} | {_n(r['hit rate'], '.1%')} | "
                  f"{r['steady s']:.1f} | {_n(extra_wall, '.2f')} | {_n(extra_tokens, '.2f')} | "
                  f"{r['wall s']:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
