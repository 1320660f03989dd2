"""HF engine vs the real vLLM engine (CPU build) through the whole filter job; prints a table.

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--rows 512] [--model tiny|smollm2]

Runs in the vLLM lane's virtualenv (`make setup-vllm`), on local Ray with one logical GPU
(all a vLLM replica needs to be placed; the CPU build runs it). One replica per engine,
float32, logprobs mode. Each configuration runs twice, on a few rows and on all of them:
the difference removes replica start-up (model load, vLLM's profiling run) and gives the
steady rate, which is what a long job sees (n/a where the difference is within start-up
noise: use more rows). The prefix-cache hit rate is the job's own
manifest figure, read from vLLM's counters; the score difference compares each row's
expected score with the HF engine's on the same prompts. CPU numbers: they check the path,
not GPU speed.
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

from alpagasus_ray.core.config import StorageConfig  # noqa: E402
from alpagasus_ray.data.io import filesystem, read_output_table  # noqa: E402
from alpagasus_ray.data.schema import ID, SCORE  # noqa: E402
from alpagasus_ray.demo import build_tiny_model, synthetic_examples  # noqa: E402
from alpagasus_ray.filter.config import FilterJobConfig  # noqa: E402
from alpagasus_ray.filter.job import run_filter  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_random_9k.json"
RUNS = [("hf", "prefix"), ("vllm", "paper"), ("vllm", "prefix")]


def load_rows(path: Path, n: int) -> tuple[list[dict], str]:
    if path.exists():
        return json.loads(path.read_text())[:n], f"Alpaca sample ({path.name})"
    return synthetic_examples(n, seed=0), "synthetic examples"


def job(src: Path, out: Path, model: Path, engine: str, layout: str, limit: int) -> FilterJobConfig:
    return FilterJobConfig.model_validate(
        {
            "input": {"uri": str(src), "limit": limit},
            "output": {"uri": str(out), "overwrite": True},
            "judge": {
                "engine": engine,
                "model": str(model),
                "layout": layout,
                "dtype": "float32",
                "max_model_len": 2048,
                "min_score_mass": 0.0,
                "batch_size": 32,
                "micro_batch_size": 8,
                "num_cpus_per_replica": 1,
                "vllm": {"engine_kwargs": {"enforce_eager": True}},
            },
            "filter": {"threshold": 4.5},
            "ray": {"prompt_worker_cpus": 0.25},
        }
    )


def measure(src: Path, tmp: Path, model: Path, engine: str, layout: str, rows: int, few: int):
    """Job wall times on `few` and on `rows` rows; steady rates from the difference."""
    walls, last = {}, None
    for n in (few, rows):
        manifest = run_filter(job(src, tmp / f"{engine}-{layout}-{n}", model, engine, layout, n))
        walls[n] = manifest.timings_s["score_and_write"]
        last = manifest
    table = read_output_table(*filesystem(str(tmp / f"{engine}-{layout}-{rows}"), StorageConfig()))
    scores = dict(zip(table.column(ID).to_pylist(), table.column(SCORE).to_pylist(), strict=True))
    metrics = last["engine_metrics"]
    few_tokens = metrics["input_tokens"] * few / rows  # prompt lengths are alike: pro rata
    extra = walls[rows] - walls[few]
    steady = extra > 0.05 * walls[rows]  # else start-up noise swamps the scoring time
    return {
        "wall s": walls[rows],
        "start-up s": walls[few],
        "end-to-end examples/s": rows / walls[rows],
        "examples/s": (rows - few) / extra if steady else None,
        "prompt tok/s": (metrics["input_tokens"] - few_tokens) / extra if steady else None,
        "hit rate": metrics.get("prefix_cache_hit_rate"),
        "scores": scores,
        "kept": last["counts"]["kept"],
        "failed": last["counts"]["failed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--few", type=int, default=16, help="rows of the start-up run")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray

    tmp = Path(tempfile.mkdtemp())
    if args.model == "tiny":
        model = build_tiny_model(tmp / "tiny", hidden_size=256, num_layers=4)
        name = "tiny random Llama (hidden 256, 4 layers, head_dim 64)"
    else:
        model, name = export_smollm2(tmp / "smollm2"), "SmolLM2-135M-Instruct"
    rows, source = load_rows(args.data, args.rows)
    src = write_jsonl(tmp / "rows.jsonl", rows)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    print(f"model: {name}, float32, logprobs mode; data: {source}, {len(rows)} rows")

    results: dict[str, dict[str, Any]] = {}
    for engine, layout in RUNS:
        results[f"{engine}, layout {layout}"] = measure(
            src, tmp, model, engine, layout, len(rows), args.few
        )
    base = results["hf, layout prefix"]
    for label, r in results.items():  # parity where the prompts are the same
        same = label.endswith("layout prefix") and label != "hf, layout prefix"
        pairs = [(s, base["scores"].get(i)) for i, s in r["scores"].items()] if same else []
        deltas = [abs(a - b) for a, b in pairs if a is not None and b is not None]
        r["max delta"] = max(deltas) if deltas else None
    print()
    print(
        "| engine, layout | wall s | start-up s | end-to-end ex/s | steady ex/s | steady prompt "
        "tok/s | prefix-cache hit rate | kept | failed | max abs score diff vs HF | steady ex/s "
        "vs HF |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cell(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    for label, r in results.items():
        ratio = (
            r["examples/s"] / base["examples/s"] if r["examples/s"] and base["examples/s"] else None
        )
        print(
            f"| {label} | {r['wall s']:.1f} | {r['start-up s']:.1f} | "
            f"{r['end-to-end examples/s']:.2f} | {cell(r['examples/s'], '.2f')} | "
            f"{cell(r['prompt tok/s'], ',.0f')} | {cell(r['hit rate'], '.1%')} | {r['kept']} | "
            f"{r['failed']} | {cell(r['max delta'], '.1e')} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x'} |"
        )


if __name__ == "__main__":
    main()
