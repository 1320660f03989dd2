"""Fine-tuning benchmark on CPU: the full data vs the subset a filter run kept; prints a table.

    python benchmarks/bench_train.py [--examples 1024] [--epochs 2] [--threshold 3.0]

The source is the first N rows of the Alpaca sample (synthetic examples when it is absent).
The real filter pipeline scores them with the tiny random judge and keeps the rows at or
above the threshold, so the kept subset is a random subset with the source's length mix.
Both sets are then trained by the same Ray Train job (2 workers x 1 CPU, tiny Llama):
the paper's claim is that training time falls in proportion to the data kept. `train s`
is the sum of the epochs' times (the loop alone); `wall s` adds Ray Train's start-up,
tokenisation, checkpoints and export, a fixed cost that weighs more on small runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.py

from helpers import write_jsonl  # noqa: E402

from alpagasus_ray.core.config import build_config  # noqa: E402
from alpagasus_ray.demo import build_tiny_model, synthetic_examples  # noqa: E402
from alpagasus_ray.filter.config import FilterJobConfig  # noqa: E402
from alpagasus_ray.filter.job import run_filter  # noqa: E402
from alpagasus_ray.train.config import TrainConfig  # noqa: E402
from alpagasus_ray.train.job import run_train  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_random_9k.json"


def source_rows(path: Path, n: int) -> tuple[list[dict[str, Any]], str]:
    if path.is_file():
        rows = json.loads(path.read_text())[:n]
        return [{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in rows], (
            f"first {len(rows)} rows of {path.name}"
        )
    return synthetic_examples(n, seed=0), f"{n} synthetic examples"


def filter_config(src: Path, out: Path, judge: Path, threshold: float) -> FilterJobConfig:
    return build_config(
        FilterJobConfig,
        {
            "input": {"uri": str(src)},
            "output": {"uri": str(out), "overwrite": True},
            "judge": {
                "model": str(judge),
                "min_score_mass": 0.0,
                "batch_size": 32,
                "num_cpus_per_replica": 0.5,
            },
            "filter": {"threshold": threshold},
        },
    )


def train_config(data: str, model: Path, storage: Path, name: str, args: Any) -> TrainConfig:
    return build_config(
        TrainConfig,
        {
            "data": {"uri": data},
            "model": {"name": str(model)},
            "train": {
                "epochs": args.epochs,
                "learning_rate": 1e-3,
                "global_batch_size": 16,
                "per_device_batch_size": 4,
                "max_length": 512,
                "log_every_steps": 1000,
            },
            "run": {"name": name, "storage_path": str(storage), "num_workers": 2},
        },
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threshold", type=float, default=3.0)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--hidden-size", type=int, default=128)
    args = p.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    judge = build_tiny_model(root / "judge")
    student = build_tiny_model(
        root / "student", hidden_size=args.hidden_size, seed=1, initializer_range=0.02
    )
    rows, origin = source_rows(args.data, args.examples)
    src = write_jsonl(root / "source.jsonl", rows)
    t0 = time.perf_counter()
    manifest = run_filter(filter_config(src, root / "filtered", judge, args.threshold))
    filter_s = time.perf_counter() - t0

    runs = {
        "full": run_train(train_config(str(src), student, root / "runs", "full", args)),
        "kept": run_train(
            train_config(str(root / "filtered"), student, root / "runs", "kept", args)
        ),
    }
    full, kept = runs["full"], runs["kept"]
    print(
        f"\nsource: {origin}; filter (tiny random judge, threshold {args.threshold:g}) kept "
        f"{manifest.counts['kept']} of {manifest.rows_read} in {filter_s:.1f} s\n"
        f"train: tiny Llama (hidden {args.hidden_size}), {args.epochs} epochs, 2 workers x 1 CPU, "
        f"global batch 16, max length 512; peak RSS: the largest worker's\n"
    )
    head = (
        "| data | rows | tokens/epoch | steps | train s | wall s | tokens/s | examples/s "
        "| peak RSS MiB | last loss |"
    )
    print(head + "\n" + "|---" * 10 + "|")
    for name, r in runs.items():
        print(
            f"| {name} | {r['examples']} | {r['tokens'] // max(r['epochs_done'], 1)} "
            f"| {r['steps']} | {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} "
            f"| {r['tokens_per_s']:.0f} | {r['examples_per_s']:.1f} | {r['peak_rss_mib']:.0f} "
            f"| {r['last_epoch_loss']:.3f} |"
        )
    print(
        f"\nkept / full: rows {kept['examples'] / full['examples']:.3f}, "
        f"tokens {kept['tokens'] / full['tokens']:.3f}, "
        f"train time {kept['train_seconds'] / full['train_seconds']:.3f}, "
        f"wall time {kept['wall_seconds'] / full['wall_seconds']:.3f}"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
