"""Fine-tuning benchmark on CPU: the full data vs the subset a filter run kept; prints a table.

    python benchmarks/bench_train.py [--examples 1024] [--epochs 2] [--threshold 3.0]

The source is the first N rows of the Alpaca sample (synthetic examples when it is absent).
The real filter pipeline scores them with the tiny random judge and keeps the rows at or
above the threshold, so the kept subset is a random subset with the source's length mix.
Both sets are then trained by the same Ray Train job (2 workers x 1 CPU, tiny Llama):
the paper's claim is that training time falls in proportion to the data kept. `train s`
is the sum of the epochs' times (the loop alone); `wall s` adds Ray Train's start-up,
tokenisation, checkpoints and export, a fixed cost that weighs more on small runs.

Then the kept rows are trained more ways, same model, rows and steps: by the hand-written
loop this project had before transformers' `Trainer` replaced it (read from git at
`--legacy-rev`; skipped where git or that revision is missing), by `Trainer` with packing
(padding-free batches), with gradient checkpointing, and with a step checkpoint after every
optimizer step. The last gives a step
checkpoint's cost: (its wall time - the run's without) / checkpoints, and a checkpoint's
size on disk.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
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


def train_config(
    data: str, model: Path, storage: Path, name: str, args: Any, **train: Any
) -> TrainConfig:
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
                **train,
            },
            "run": {"name": name, "storage_path": str(storage), "num_workers": 2},
        },
    )


LEGACY = "legacy_train"  # the old loop's package, written into a temporary folder


def legacy_loop(rev: str, root: Path) -> Path | None:
    """The hand-written loop (`train/loop.py`, `train/metrics.py`) at git revision `rev`,
    as package `legacy_train` under `root`, or None where git or the revision is missing."""
    repo = Path(__file__).resolve().parents[1]
    package = root / LEGACY
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for name in ("loop", "metrics"):
        try:
            text = subprocess.run(
                ["git", "-C", str(repo), "show", f"{rev}:alpagasus_ray/train/{name}.py"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return None
        text = text.replace("alpagasus_ray.train.metrics", f"{LEGACY}.metrics")
        text = text.replace("alpagasus_ray.train.loop", f"{LEGACY}.loop")
        (package / f"{name}.py").write_text(text)
    return root


def checkpoint_mib(run: dict[str, Any]) -> float:
    folder = Path(run["checkpoint"])
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def comparison(runs: dict[str, dict[str, Any]], every_step: dict[str, Any]) -> None:
    print(
        "\n| kept rows trained by | steps | s/step | train s | wall s | peak RSS MiB per worker "
        "| last loss |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for name, r in runs.items():
        print(
            f"| {name} | {r['steps']} | {r['train_seconds'] / max(r['steps'], 1):.3f} "
            f"| {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} | {r['peak_rss_mib']:.0f} "
            f"| {r['last_epoch_loss']:.4f} |"
        )
    base = runs["Trainer"]
    saves = every_step["steps"]  # one checkpoint per optimizer step
    cost = (every_step["wall_seconds"] - base["wall_seconds"]) / max(saves, 1)
    print(
        f"\nstep checkpoints: {saves} (one per optimizer step) added "
        f"{every_step['wall_seconds'] - base['wall_seconds']:.1f} s of wall time: "
        f"{cost:.2f} s per checkpoint; one checkpoint {checkpoint_mib(every_step):.1f} MiB "
        f"(weights, AdamW state, scheduler, RNG, progress)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threshold", type=float, default=3.0)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--legacy-rev", default="10d046c", help="a commit with the old loop")
    args = p.parse_args()

    import ray

    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    legacy = legacy_loop(args.legacy_rev, root / "legacy")
    if legacy:  # the workers import the old loop too: Ray's workers inherit this variable
        sys.path.insert(0, str(legacy))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(legacy), os.environ.get("PYTHONPATH")])
        )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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

    filtered = str(root / "filtered")
    same = {"Trainer": kept}
    if legacy:
        old = importlib.import_module(f"{LEGACY}.loop")
        same = {
            f"hand-written loop ({args.legacy_rev})": old.run_train(
                train_config(filtered, student, root / "runs", "legacy", args)
            ),
            **same,
        }
    else:
        print(f"\n(no hand-written loop: git or revision {args.legacy_rev} is missing)")
    for label, name, option in (
        ("Trainer, packing", "packed", "packing"),
        ("Trainer, gradient checkpointing", "recomputed", "gradient_checkpointing"),
    ):
        cfg = train_config(filtered, student, root / "runs", name, args, **{option: True})
        same[label] = run_train(cfg)
    every = train_config(filtered, student, root / "runs", "every-step", args, save_every_steps=1)
    comparison(same, run_train(every))
    ray.shutdown()


if __name__ == "__main__":
    main()
