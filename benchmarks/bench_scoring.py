"""Scoring benchmark on the tiny judge, CPU, one process; prints a table.

    python benchmarks/bench_scoring.py [--examples 128] [--hidden-size 256] [--layers 4]

Rows: logprobs mode vs generate mode (256 new tokens, as the paper's reference code), the
batched engine vs a one-prompt-at-a-time loop (for both modes), and the shared-prefix
fraction of prompt tokens for the `paper` and `prefix` layouts. Ratios are against a
baseline measured in the same process. Uses the Alpaca sample when present, synthetic
examples otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.demo import build_tiny_model, synthetic_examples
from alpagasus_ray.engines.hf import HFEngine
from alpagasus_ray.text.models import load_tokenizer
from alpagasus_ray.text.prompts import rating_prompt_ids, shared_prefix_len

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_random_9k.json"


class PeakRSS:
    """Samples this process's resident memory while a block runs (torch allocates outside
    Python's allocator, so tracemalloc would not see it)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        page = 4096
        while True:
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page)
            if self._stop.wait(0.005):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def load_examples(path: Path, n: int) -> tuple[list[dict], str]:
    if path.exists():
        return json.loads(path.read_text())[:n], f"Alpaca sample ({path.name})"
    return synthetic_examples(n, seed=0), "synthetic examples"


def timed(
    engine: HFEngine, prompts: list[list[int]], one_by_one: bool = False, repeats: int = 3
) -> dict:
    """Median of `repeats` runs; peak RSS over all of them."""
    times = []
    with PeakRSS() as mem:
        for _ in range(repeats):
            start = time.perf_counter()
            outs = [engine.judge([p])[0] for p in prompts] if one_by_one else engine.judge(prompts)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "examples/s": len(prompts) / seconds,
        "prompt tok/s": sum(len(p) for p in prompts) / seconds,
        "output tok/s": sum(o.num_output_tokens for o in outs) / seconds,
        "peak RSS MiB": mem.mib,
    }


def load_params(model_dir: Path) -> list:
    from transformers import AutoModelForCausalLM

    return list(AutoModelForCausalLM.from_pretrained(model_dir).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--generate-examples", type=int, default=16)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)

    model_dir = build_tiny_model(
        Path(tempfile.mkdtemp()) / "tiny-judge",
        hidden_size=args.hidden_size,
        num_layers=args.layers,
    )
    tok = load_tokenizer(str(model_dir))
    rows, source = load_examples(args.data, args.examples)
    prompts = rating_prompt_ids(tok, rows, "accuracy", "prefix")
    params = sum(p.numel() for p in load_params(model_dir))
    print(
        f"judge: tiny random Llama, {params / 1e6:.1f}M params, hidden {args.hidden_size}, "
        f"{args.layers} layers (CPU, {torch.get_num_threads()} threads); data: {source}, "
        f"{len(rows)} examples"
    )

    logprobs = HFEngine(JudgeConfig(model=str(model_dir), micro_batch_size=16))
    logprobs.judge(prompts[:4])  # warm-up
    gen_cfg = JudgeConfig(
        model=str(model_dir), mode="generate", max_new_tokens=256, micro_batch_size=16
    )
    generate = HFEngine(gen_cfg, model=logprobs.model, tokenizer=logprobs.tokenizer)

    results = {}
    results["logprobs, batched (baseline)"] = timed(logprobs, prompts)
    results["logprobs, one at a time"] = timed(logprobs, prompts, one_by_one=True)
    sub = prompts[: args.generate_examples]
    results[f"generate 256 tok, batched ({len(sub)} ex)"] = timed(generate, sub, repeats=1)
    results[f"generate 256 tok, one at a time ({len(sub)} ex)"] = timed(
        generate, sub, one_by_one=True, repeats=1
    )

    base = results["logprobs, batched (baseline)"]["examples/s"]
    cols = ["examples/s", "prompt tok/s", "output tok/s", "peak RSS MiB"]
    print()
    print(f"| run | {' | '.join(cols)} | speed vs baseline |")
    print("|---|" + "---:|" * (len(cols) + 1))
    for name, r in results.items():
        cells = " | ".join(f"{r[c]:,.1f}" for c in cols)
        print(f"| {name} | {cells} | {r['examples/s'] / base:.2f}x |")

    print()
    print("| layout | mean prompt tokens | shared-prefix tokens | shared fraction |")
    print("|---|---:|---:|---:|")
    for layout in ("paper", "prefix"):
        seqs = rating_prompt_ids(tok, rows, "accuracy", layout)
        shared = shared_prefix_len(seqs)
        mean = sum(len(s) for s in seqs) / len(seqs)
        print(f"| {layout} | {mean:.1f} | {shared} | {shared / mean:.1%} |")


if __name__ == "__main__":
    main()
