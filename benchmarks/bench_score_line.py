"""Generate mode with and without `judge.stop_after_score_line`, per engine; a table.

    .venv-vllm/bin/python benchmarks/bench_score_line.py [--rows 32]

SmolLM2-135M-Instruct (float32, CPU) rates the first --rows rows of the shared Alpaca 9k
(synthetic rows without it) with the paper's prompt, greedy, `max_new_tokens` 256: the HF
engine and the vLLM engine through the whole filter job, and the API engine against vLLM's
own OpenAI-compatible server on 127.0.0.1. Output tokens per row are what an API judge bills
at several times the price of input tokens; the cost columns use the prices given (by
default $0.15 / $0.60 per million input / output tokens, a small hosted model's) for the
tokens counted, and the dry run's worst case (every answer at its token cap). CPU numbers:
the ratios (same run, same rows) carry over, the rates do not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the CPU build's default is more

from api_server import VLLMServer  # noqa: E402
from helpers import export_smollm2  # noqa: E402

from alpagasus_ray.core.config import JudgeConfig, apply_overrides, build_config  # noqa: E402
from alpagasus_ray.demo import synthetic_examples  # noqa: E402
from alpagasus_ray.engines.api import APIEngine  # noqa: E402
from alpagasus_ray.engines.hf import HFEngine  # noqa: E402
from alpagasus_ray.engines.parse import parse_score  # noqa: E402
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.text.prompts import rating_messages, rating_prompt_ids  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_random_9k.json"


def judge(model: Path, stop: bool, **extra) -> JudgeConfig:
    return JudgeConfig(model=str(model), mode="generate", dtype="float32", min_score_mass=0.0,
                       max_model_len=2048, stop_after_score_line=stop, **extra)  # fmt: skip


def summary(texts: list[str | None], tokens: list[int], prompt_tokens: int, seconds: float,
            cfg: JudgeConfig, price: tuple[float, float]) -> dict:  # fmt: skip
    n = len(texts)
    out = sum(tokens)
    cost = (prompt_tokens * price[0] + out * price[1]) / 1e6 * 1000 / n
    cap = (prompt_tokens * price[0] + n * cfg.answer_tokens() * price[1]) / 1e6 * 1000 / n
    usable = sum(parse_score(t or "") is not None for t in texts)
    return {"rows": n, "s": seconds, "ex/s": n / seconds, "out/row": out / n,
            "usable": usable, "cost": cost, "cap": cap}  # fmt: skip


def hf_run(model: Path, rows: list[dict], stop: bool, price) -> dict:
    engine = HFEngine(judge(model, stop, micro_batch_size=8))
    ids = rating_prompt_ids(engine.tokenizer, rows, "accuracy", "paper")
    start = time.perf_counter()
    outs = engine.judge(ids)
    seconds = time.perf_counter() - start
    return summary([o.text for o in outs], [o.num_output_tokens for o in outs],
                   sum(map(len, ids)), seconds, engine.cfg, price)  # fmt: skip


def api_run(base_url: str, model: Path, rows: list[dict], stop: bool, price) -> dict:
    cfg = judge(model, stop, engine="openai", tokenizer=str(model),
                api={"base_url": base_url, "api_key_env": None, "max_concurrency": 16})  # fmt: skip
    cfg = cfg.model_copy(update={"model": "m"})
    engine = APIEngine(cfg)
    texts = [(r["instruction"], r["input"], r["output"]) for r in rows]
    reqs = [json.dumps({"messages": rating_messages(*t, "accuracy", "paper")}) for t in texts]
    start = time.perf_counter()
    outs = engine.judge([None] * len(rows), reqs)
    seconds = time.perf_counter() - start
    engine.close()
    return summary([o.text for o in outs], [o.num_output_tokens for o in outs],
                   sum(o.num_prompt_tokens or 0 for o in outs), seconds, cfg, price)  # fmt: skip


def vllm_run(model: Path, rows: list[dict], stop: bool, price, tmp: Path) -> dict:
    import pyarrow.dataset as pads

    from alpagasus_ray.filter.job import run_filter

    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / f"vllm-{stop}"
    eager = {"engine_kwargs": {"enforce_eager": True}}
    cfg = judge(model, stop, engine="vllm", batch_size=64, layout="paper", vllm=eager)
    data = {"input": {"uri": str(src)}, "output": {"uri": str(out), "overwrite": True},
            "judge": cfg.model_dump(exclude_defaults=True)}  # fmt: skip
    manifest = run_filter(build_config(FilterJobConfig, apply_overrides(data, [])))
    table = pads.dataset(str(out / "data"), partitioning="hive").to_table()
    metrics = manifest.engine_metrics
    return summary(table.column("judge_text").to_pylist(),
                   table.column("num_output_tokens").fill_null(0).to_pylist(),
                   metrics["input_tokens"], manifest.timings_s["score_and_write"],
                   cfg, price)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--price-in", type=float, default=0.15, help="$ per M input tokens")
    parser.add_argument("--price-out", type=float, default=0.60, help="$ per M output tokens")
    parser.add_argument("--engines", nargs="+", default=["hf", "api", "vllm"])
    args = parser.parse_args()
    price = (args.price_in, args.price_out)
    tmp = Path(tempfile.mkdtemp(prefix="bench-score-line-"))
    model = export_smollm2(tmp / "smol")
    if SHARED.exists():
        rows = json.loads(SHARED.read_text())[: args.rows]
    else:
        rows = synthetic_examples(args.rows, seed=0, unique=True)
    print(f"{len(rows)} rows, SmolLM2-135M-Instruct fp32 on CPU, generate mode, paper layout; "
          f"prices ${price[0]}/M in, ${price[1]}/M out\n")  # fmt: skip
    print(
        "| engine | stop at score line | wall s | ex/s | vs no stop | output tokens/row "
        "| rows with a score | $ per 1k rows (counted) | $ per 1k rows (dry-run cap) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for engine in args.engines:
        runs = {stop: measure(engine, model, rows, stop, price, tmp) for stop in (False, True)}
        for stop, r in runs.items():
            print(f"| {engine} | {'on' if stop else 'off'} | {r['s']:.1f} | {r['ex/s']:.2f} | "
                  f"{r['ex/s'] / runs[False]['ex/s']:.2f}x | {r['out/row']:.1f} | "
                  f"{r['usable']}/{r['rows']} | {r['cost']:.4f} | {r['cap']:.4f} |",
                  flush=True)  # fmt: skip


def measure(engine: str, model: Path, rows: list[dict], stop: bool, price, tmp: Path) -> dict:
    if engine == "hf":
        return hf_run(model, rows, stop, price)
    if engine == "api":
        server = VLLMServer(model, ["m"], tmp / f"server-{stop}.log").wait()
        try:
            return api_run(server.base_url, model, rows, stop, price)
        finally:
            server.stop()
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    return vllm_run(model, rows, stop, price, tmp)


if __name__ == "__main__":
    main()
