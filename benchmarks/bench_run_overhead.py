"""What a small filter run costs in processes: wall and CPU seconds of tiny-judge runs (the HF
engine: a real tokenizer and model), with the actors each starts, against the layout before
(the prompt stage on an actor of its own), in one Ray session.

    python benchmarks/bench_run_overhead.py [--runs 8] [--rows 40]

A small run's cost is nearly all process starts: each actor is a Python process of its own
(Ray, Ray Data and the package imported; transformers and torch too where it loads a
tokenizer or a model), and it ends with its actor. An HF judge's run now starts two: its
ledger (progress and the contents seen, `filter/ledger.py`) and its judge replica, which
builds its rows' prompts itself with the tokenizer it loads anyway
(`JudgeConfig.prompts_in_replica`). "before" runs the same job with the prompt stage on an
actor of its own, as it ran (`prompts_in_replica` forced off). The variants alternate, run by
run, with no pause between, as the tests run them, so a drift of the machine touches both
alike and a run pays for the processes the one before left to end. CPU seconds are the whole
machine's (/proc/stat), as the runs' workers are other processes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from conftest import WARM_WORKERS, job_config  # noqa: E402
from helpers import actor_classes, write_jsonl  # noqa: E402

from alpagasus_ray.core.judge_config import JudgeConfig  # noqa: E402
from alpagasus_ray.core.runtime import start_local_ray  # noqa: E402
from alpagasus_ray.demo import build_tiny_model, synthetic_examples  # noqa: E402
from alpagasus_ray.filter.job import run_filter  # noqa: E402


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def as_before() -> Iterator[None]:
    """The run as before: the prompt stage on an actor of its own."""
    saved = JudgeConfig.prompts_in_replica
    JudgeConfig.prompts_in_replica = lambda self: False  # type: ignore[method-assign]
    try:
        yield
    finally:
        JudgeConfig.prompts_in_replica = saved  # type: ignore[method-assign]


def one_run(src: Path, out: Path, model: Path, before: bool) -> tuple[float, float, int]:
    """(wall s, machine CPU s, actors started) of one tiny-judge run of `src`."""
    known = actor_classes()
    cpu, start = busy_seconds(), time.monotonic()
    with as_before() if before else contextlib.nullcontext():
        manifest = run_filter(job_config(str(src), str(out), model))
    wall, used = time.monotonic() - start, busy_seconds() - cpu
    assert manifest.invariant_ok, manifest.counts
    return wall, used, len(set(actor_classes()) - set(known))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="runs of each variant")
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()
    start_local_ray(
        num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=WARM_WORKERS
    )  # fmt: skip (as the tests' session Ray)
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    model = build_tiny_model(tmp / "tiny-judge")
    src = write_jsonl(tmp / "in.jsonl", synthetic_examples(args.rows, seed=3))
    one_run(src, tmp / "warm-up", model, before=False)  # Ray Data's own actors, first imports
    results: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
    for i in range(args.runs):
        for before in (True, False):
            results[before].append(one_run(src, tmp / f"out-{before}-{i}", model, before))
    base_wall = statistics.median(r[0] for r in results[True])
    base_cpu = statistics.median(r[1] for r in results[True])
    print(f"\n{args.runs} tiny-judge runs of {args.rows} rows each, session Ray of 2 CPUs\n")
    print(
        "| prompts built | actors a run | wall s (median) | machine CPU s (median) | wall | CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for before, name in (
        (True, "before: on an actor of their own"),
        (False, "now: in the replica"),
    ):
        walls, cpus = [r[0] for r in results[before]], [r[1] for r in results[before]]
        actors = statistics.median(r[2] for r in results[before])
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"| {name} | {actors:g} | {wall:.2f} | {cpu:.2f} | "
              f"{wall / base_wall:.2f}x | {cpu / base_cpu:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
