"""What a `ray.train.report` per logged step costs a training loop; prints a table.

    python benchmarks/bench_train_reports.py [--steps 40] [--step-s 0.05]

Ray Train's controller takes a worker's report when it polls its workers (every
`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`, 2 s by default), and a worker's next report waits
until the last one was taken. This runs the same loop of fixed-length steps (a sleep
standing for a step's compute, so only the reports differ) on 2 workers, reporting every
step, every 10 steps, or only at the end (what the fine-tune does: one report per epoch,
with its checkpoint), and prints each loop's time against the loop with one report, at its end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer


def loop(config: dict) -> None:
    every, steps, step_s = config["every"], config["steps"], config["step_s"]
    start = time.perf_counter()
    for step in range(1, steps + 1):
        time.sleep(step_s)
        if every and step % every == 0 and step < steps:
            ray.train.report({"step": step})
    loop_s = time.perf_counter() - start
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["out"]).write_text(str(loop_s))
    ray.train.report({"step": steps})


def run(every: int, steps: int, step_s: float, tmp: Path) -> float:
    out = tmp / f"loop-{every}.txt"
    trainer = TorchTrainer(
        loop,
        train_loop_config={"every": every, "steps": steps, "step_s": step_s, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name=f"reports-{every}", storage_path=str(tmp)),
    )
    trainer.fit()
    return float(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-s", type=float, default=0.05)
    args = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-reports-"))
    print(f"\n{args.steps} steps of {args.step_s} s on 2 workers; Ray Train's default poll\n")
    print("| reports | loop s | vs one report |\n|---|---:|---:|")
    base = None
    for every, name in ((0, "one, at the end"), (10, "every 10 steps"), (1, "every step")):
        loop_s = run(every, args.steps, args.step_s, tmp)
        base = base or loop_s
        print(f"| {name} | {loop_s:.2f} | {loop_s / base:.2f}x |", flush=True)
    ray.shutdown()
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
