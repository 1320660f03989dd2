"""Training metrics: a meter summed over the workers, the metrics history written with the
run (so two runs can be compared afterwards), and the totals of a run's summary."""

from __future__ import annotations

import json
import resource
import time
from typing import Any

from alpagasus_ray.data.io import filesystem, join
from alpagasus_ray.train.config import TrainConfig, run_dir

METRICS_FILE, SUMMARY_FILE = "metrics.jsonl", "summary.json"


def peak_memory_mib(device: Any) -> list[float]:
    """[peak RSS of this process, peak GPU memory allocated by torch], in MiB."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return [rss, gpu]


class Meter:
    """A window's batches, summed over the workers, and its steps' losses (each already the
    mean over every worker's tokens, as `Trainer` logs it), so every row is global."""

    FIELDS = ("tokens", "examples", "padded_tokens")

    def __init__(self, device: Any):
        self.device = device
        self.sums = [0] * len(self.FIELDS)  # plain ints: no device work per batch, only in `row`
        self.losses: list[float] = []
        self.start = time.perf_counter()

    def add_batch(self, tokens: int, examples: int, padded: int) -> None:
        self.sums = [a + b for a, b in zip(self.sums, (tokens, examples, padded), strict=True)]

    def add_loss(self, loss: float) -> None:
        self.losses.append(loss)

    def row(self) -> dict[str, Any]:
        """A collective under several workers: every worker calls it at the same points."""
        import torch
        import torch.distributed as dist

        sums = torch.tensor(self.sums, dtype=torch.float64, device=self.device)
        peaks = torch.tensor(peak_memory_mib(self.device), dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(peaks, op=dist.ReduceOp.MAX)  # the worker that needed the most
        tokens, examples, padded = sums.tolist()
        seconds = time.perf_counter() - self.start
        return {
            "loss": sum(self.losses) / len(self.losses) if self.losses else None,
            "tokens": int(tokens),
            "examples": int(examples),
            "tokens_per_s": tokens / seconds,
            "examples_per_s": examples / seconds,
            "pad_fraction": 1 - tokens / max(padded, 1),
            "seconds": seconds,
            "peak_rss_mib": peaks[0].item(),
            "peak_gpu_mib": peaks[1].item() if self.device.type == "cuda" else None,
        }


def read_jsonl(fs: Any, path: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file on `fs`; none when it does not exist yet."""
    if not fs.exists(path):
        return []
    with fs.open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(fs: Any, path: str, rows: list[dict[str, Any]]) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_run_metrics(cfg: TrainConfig, rows: list[dict[str, Any]]) -> None:
    """The metrics history next to the run's checkpoints, so runs can be compared later."""
    write_jsonl(*filesystem(join(run_dir(cfg), METRICS_FILE), cfg.storage), rows)


def read_run_metrics(cfg: TrainConfig) -> list[dict[str, Any]]:
    return read_jsonl(*filesystem(join(run_dir(cfg), METRICS_FILE), cfg.storage))


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the epoch rows: what a comparison of two runs needs."""
    epochs = [r for r in rows if r["kind"] == "epoch"]
    seconds = sum(r["seconds"] for r in epochs)
    tokens = sum(r["tokens"] for r in epochs)
    examples = sum(r["examples"] for r in epochs)
    return {
        "epochs_done": len(epochs),
        "steps": epochs[-1]["step"] if epochs else 0,
        "train_seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds else 0.0,
        "examples_per_s": examples / seconds if seconds else 0.0,
        "peak_rss_mib": _max(epochs, "peak_rss_mib"),
        "peak_gpu_mib": _max(epochs, "peak_gpu_mib"),
        "first_epoch_loss": epochs[0]["loss"] if epochs else None,
        "last_epoch_loss": epochs[-1]["loss"] if epochs else None,
    }


def _max(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) if values else None
