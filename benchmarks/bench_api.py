"""The API judge against vLLM's own OpenAI-compatible server on 127.0.0.1; a table.

    .venv-vllm/bin/python benchmarks/bench_api.py          # make bench-api

Rates at 1, 8 and 32 requests in flight from one replica (the engine alone, then the whole
filter job through Ray with that setting), for the tiny random model and SmolLM2-135M-Instruct,
chat endpoint, logprobs mode (1 answer token, top 20 log-probabilities). The ratio is
against 1 in flight in the same run. CPU numbers: they show what concurrency buys against a
server that batches, not what a GPU server or a hosted API sustains.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from api_server import VLLMServer  # noqa: E402
from helpers import export_smollm2  # noqa: E402

from alpagasus_ray.core.config import (  # noqa: E402
    FilterJobConfig,  # noqa: E402
    JudgeConfig,
    apply_overrides,
    build_config,
)
from alpagasus_ray.demo import build_tiny_model, synthetic_examples  # noqa: E402
from alpagasus_ray.engines.api import APIEngine  # noqa: E402
from alpagasus_ray.text.prompts import rating_messages  # noqa: E402


def engine_rate(base_url: str, rows: list[dict], inflight: int) -> tuple[float, float]:
    cfg = JudgeConfig(engine="openai", model="m", min_score_mass=0.0,
                      api={"base_url": base_url, "api_key_env": None,
                           "max_concurrency": inflight})  # fmt: skip
    engine = APIEngine(cfg)
    msgs = [rating_messages(r["instruction"], r["input"], r["output"], "accuracy", "prefix")
            for r in rows]  # fmt: skip
    reqs = [json.dumps({"messages": m}) for m in msgs]
    engine.judge([None] * 4, reqs[:4])  # warm-up
    start = time.perf_counter()
    outs = engine.judge([None] * len(rows), reqs)
    seconds = time.perf_counter() - start
    engine.close()
    assert not [o.error for o in outs if o.error], "requests failed"
    return len(rows) / seconds, sum(o.num_prompt_tokens for o in outs) / seconds


def job_rate(base_url: str, rows: list[dict], inflight: int, tmp: Path) -> float:
    from alpagasus_ray.filter.job import run_filter

    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"input": {"uri": str(src)}, "output": {"uri": str(tmp / f"out{inflight}"),
            "overwrite": True}, "judge": {"model": "m"}}  # fmt: skip
    sets = ["judge.engine=openai", f"judge.api.base_url={base_url}",
            "judge.api.api_key_env=null", f"judge.api.max_concurrency={inflight}",
            "judge.min_score_mass=0", "judge.batch_size=64",
            "judge.num_cpus_per_replica=0.25"]  # fmt: skip
    manifest = run_filter(build_config(FilterJobConfig, apply_overrides(data, sets)))
    return manifest.rows_read / manifest.timings_s["score_and_write"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--inflight", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    rows = synthetic_examples(args.rows, seed=0, unique=True)  # no copies: each row is sent
    models = {
        "tiny random Llama": build_tiny_model(tmp / "tiny", hidden_size=256),
        "SmolLM2-135M-Instruct": export_smollm2(tmp / "smol"),
    }
    print(f"{args.rows} Alpaca-like rows, chat endpoint, logprobs mode; vLLM CPU server, fp32\n")
    print("| model | in flight | engine ex/s | engine prompt tok/s | job ex/s | engine vs 1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, path in models.items():
        server = VLLMServer(path, ["m"], tmp / f"{path.name}.log").wait()
        try:
            base = None
            for n in args.inflight:
                rate, tokens = engine_rate(server.base_url, rows, n)
                job = job_rate(server.base_url, rows, n, tmp)
                base = base or rate
                print(f"| {name} | {n} | {rate:,.1f} | {tokens:,.0f} | {job:,.1f} "
                      f"| {rate / base:.2f}x |", flush=True)  # fmt: skip
        finally:
            server.stop()


if __name__ == "__main__":
    main()
