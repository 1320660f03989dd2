"""`judge.turns: each` against `judge.turns: last` on conversations of 1, 2, 4 and 8 turns,
on the real vLLM engine (CPU build) with prefix caching; prints a table.

    .venv-vllm/bin/python benchmarks/bench_conversations.py [--conversations 32] [--few 4]

Conversations are built from the shared Alpaca rows (each turn one row's instruction and
answer; synthetic rows where the data folder is absent). SmolLM2-135M-Instruct, float32,
logprobs mode, prefix layout, one replica. Each configuration runs twice, on `--few`
conversations and on all: the difference removes replica start-up and gives the steady wall
time of the rest. "tokens computed" are the prompt tokens vLLM did not find in its prefix
cache (its own hit counters, read by the job). CPU numbers: they check the path, not GPU
speed.
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
TURNS = (1, 2, 4, 8)


def conversations(rows: list[dict], n: int, turns: int) -> list[dict]:
    """`n` conversations of `turns` exchanges each, from consecutive rows (input folded into
    the user turn, as a chat would have it)."""
    chats = []
    for i in range(n):
        messages = []
        for r in rows[(i * turns) % len(rows) :][:turns]:
            user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
            messages += [{"role": "user", "content": user},
                         {"role": "assistant", "content": r["output"]}]  # fmt: skip
        chats.append({"messages": messages})
    return chats


def job(src: Path, out: Path, model: Path, turns: str) -> FilterJobConfig:
    return FilterJobConfig.model_validate(
        {
            "input": {"uri": str(src), "columns": {"messages": "messages"}},
            "output": {"uri": str(out), "overwrite": True},
            "judge": {
                "engine": "vllm",
                "model": str(model),
                "layout": "prefix",
                "turns": turns,
                "dtype": "float32",
                "max_model_len": 8192,
                "min_score_mass": 0.0,
                "batch_size": 32,
                "num_cpus_per_replica": 1,
                "vllm": {"engine_kwargs": {"enforce_eager": True}},
            },
            "filter": {"threshold": 4.5},
            "ray": {"prompt_worker_cpus": 0.25},
        }
    )


def measure(tmp: Path, model: Path, chats: list[dict], few: int, turns: str) -> dict[str, Any]:
    """Wall times on `few` and on all conversations; the steady figures from the difference."""
    walls, metrics = {}, {}
    for n in (few, len(chats)):
        src = write_jsonl(tmp / f"in-{turns}-{n}" / "chats.jsonl", chats[:n])
        manifest = run_filter(job(src, tmp / f"out-{turns}-{n}", model, turns))
        walls[n], metrics[n] = manifest.timings_s["score_and_write"], manifest.engine_metrics
    full = metrics[len(chats)]
    hits, queries = full.get("prefix_cache_hit_tokens"), full.get("prefix_cache_query_tokens")
    steady = walls[len(chats)] - walls[few]
    return {
        "prompt tokens": full["input_tokens"],
        "tokens computed": int(queries - hits) if hits is not None and queries else None,
        "hit rate": full.get("prefix_cache_hit_rate"),
        "wall s": walls[len(chats)],
        "steady s": steady,
        "examples/s": (len(chats) - few) / steady if steady > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--few", type=int, default=4, help="conversations of the start-up run")
    parser.add_argument("--turns", type=int, nargs="*", default=list(TURNS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import ray

    tmp = Path(tempfile.mkdtemp())
    model = export_smollm2(tmp / "smollm2")
    if args.data.exists():
        rows, source = json.loads(args.data.read_text()), f"Alpaca rows ({args.data.name})"
    else:
        rows, source = synthetic_examples(8 * args.conversations, seed=0), "synthetic rows"
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    print(f"SmolLM2-135M-Instruct on vLLM (CPU), float32, logprobs, prefix layout; {source}; "
          f"{args.conversations} conversations per run, start-up run {args.few}")  # fmt: skip
    print()
    print("| turns | judged | prompt tokens | tokens computed | prefix-cache hit rate | "
          "steady wall s | steady conversations/s | wall s (with start-up) | "
          "each / last (steady wall) |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for turns in args.turns:
        chats = conversations(rows, args.conversations, turns)
        found = {mode: measure(tmp, model, chats, args.few, mode) for mode in ("last", "each")}
        for mode, r in found.items():
            ratio = (
                r["steady s"] / found["last"]["steady s"] if found["last"]["steady s"] > 0 else None
            )
            print(
                f"| {turns} | {mode} | {r['prompt tokens']:,} | "
                f"{'n/a' if r['tokens computed'] is None else format(r['tokens computed'], ',')} | "
                f"{'n/a' if r['hit rate'] is None else format(r['hit rate'], '.1%')} | "
                f"{r['steady s']:.1f} | "
                f"{'n/a' if r['examples/s'] is None else format(r['examples/s'], '.2f')} | "
                f"{r['wall s']:.1f} | {'n/a' if ratio is None else f'{ratio:.2f}x'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
