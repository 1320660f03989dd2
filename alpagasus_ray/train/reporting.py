"""The `Trainer` callback between transformers and Ray Train: the run's metrics rows (every
`log_every_steps` optimizer steps and at each epoch's end), when to checkpoint (every
`save_every_steps` steps and at each epoch's end), and each checkpoint's report to Ray
Train, which uploads it to the run's storage and keeps the newest `keep_checkpoints`."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from transformers import TrainerCallback

from alpagasus_ray.train.config import TrainConfig
from alpagasus_ray.train.metrics import (
    METRICS_FILE,
    Meter,
    read_jsonl,
    write_jsonl,
    write_run_metrics,
)

TRAINER_STATE = "trainer_state.json"  # transformers' progress file inside a checkpoint


def resume_point(checkpoint_dir: str | None) -> tuple[int, int]:
    """(epoch, optimizer step) a checkpoint was written at; (0, 0) for a fresh run."""
    if not checkpoint_dir:
        return 0, 0
    with open(os.path.join(checkpoint_dir, TRAINER_STATE)) as f:
        state = json.load(f)
    return int(state["epoch"]), int(state["global_step"])


class RunReporter(TrainerCallback):
    """Every hook here runs on every worker at the same step: the meters' all-reduces and
    Ray Train's reports are collectives, each worker reaching them the same number of times."""

    def __init__(
        self,
        cfg: TrainConfig,
        batches: Any,  # the worker's ShardBatches: its epoch sets the shuffle seed
        resume: str | None,
        total_steps: int,
        skipped_rows: int,
    ):
        import fsspec

        self.cfg, self.batches = cfg, batches
        self.local = fsspec.filesystem("file")  # a checkpoint is assembled here, then uploaded
        self.history = read_jsonl(self.local, os.path.join(resume, METRICS_FILE)) if resume else []
        epoch, step = resume_point(resume)
        self.context = {
            "resumed_from_epoch": epoch,
            "resumed_from_step": step,
            "skipped_rows": skipped_rows,
            "total_steps": total_steps,
        }
        self.elapsed = self.history[-1]["elapsed_s"] if self.history else 0.0
        self.started = time.perf_counter()
        self.lr = None
        self.epoch_meter = self.step_meter = None

    # ------------------------------------------------------------ meters

    def add_batch(self, tokens: int, examples: int, padded: int) -> None:
        for meter in (self.epoch_meter, self.step_meter):
            meter.add_batch(tokens, examples, padded)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.epoch_meter, self.step_meter = Meter(args.device), Meter(args.device)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # `state.epoch` is fractional mid-epoch (and whole at an epoch's end): its floor is
        # the epoch starting now, on a resume too. Its shuffle seed follows from it.
        self.batches.epoch = int(state.epoch or 0)
        self.epoch_meter = Meter(args.device)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs:  # the end-of-training summary has no step loss
            return
        self.lr = logs.get("learning_rate", self.lr)
        for meter in (self.epoch_meter, self.step_meter):
            meter.add_loss(float(logs["loss"]))
        if state.global_step % self.cfg.train.log_every_steps == 0:
            self._record("step", self.step_meter, state.global_step)
            self.step_meter = Meter(args.device)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record("epoch", self.epoch_meter, state.global_step)
        control.should_save = True

    def _record(self, kind: str, meter: Meter, step: int) -> None:
        row = {"kind": kind, "epoch": self.batches.epoch, "step": step, **meter.row()}
        row["elapsed_s"] = self.elapsed + time.perf_counter() - self.started
        self.history.append({**row, "lr": self.lr, **self.context})

    # ------------------------------------------------------------ checkpoints

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        every = self.cfg.train.save_every_steps
        # An epoch's last step is saved after its epoch row (`on_epoch_end`), so that the
        # checkpoint's history has it: `state.epoch` is whole exactly there.
        epoch_ends = state.epoch is not None and float(state.epoch).is_integer()
        if every and state.global_step % every == 0 and not epoch_ends:
            control.should_save = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The last report carries where this run resumed from, also when a rerun of a
        finished run had nothing left to train (and so saved nothing)."""
        import ray.train

        ray.train.report({**(self.history[-1] if self.history else {}), **self.context})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """`Trainer` wrote this worker's part of the checkpoint (rank 0: weights, optimizer,
        scheduler, progress; every rank: its RNG state, and its shards under FSDP); Ray
        Train merges the parts into one checkpoint in the run's storage."""
        import ray.train

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero:
            write_jsonl(self.local, os.path.join(folder, METRICS_FILE), self.history)
            write_run_metrics(self.cfg, self.history)
        last = self.history[-1] if self.history else {}
        ray.train.report(
            {**last, **self.context, "step": state.global_step},
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            delete_local_checkpoint_after_upload=True,
        )
