"""Export a finished output in every format and load it back with the library that reads it.

    python benchmarks/bench_export.py [--input FILE] [--keep-fraction 0.17]

One filter run (the tiny random judge, `filter.keep_fraction`, since its scores sit below
4.5) on FILE (default: the shared Alpaca 9k beside the repo, else 9,229 synthetic rows), then
`alpagasus-ray export` of its kept rows as Alpaca JSON, chat messages JSONL, a `datasets`
folder and one Parquet file, each in a fresh process. Each export is loaded back with its
consumer (`json`, `datasets.load_dataset("json")`, `datasets.load_from_disk`, pyarrow) and
compared, row for row, with the kept partition the manifest lists. Peak RSS is the export
process's own (`wait4`), against the filter run's in the same table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]
SHARED_9K = HERE.parent / "shared" / "data" / "alpaca_random_9k.json"
TRIPLE = ("instruction", "input", "output")


def run(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `alpagasus-ray ARGS` in a fresh process."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "alpagasus_ray.cli", *args])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"alpagasus-ray {' '.join(args)}: exit {proc.returncode}")
    return time.monotonic() - start, usage.ru_maxrss / 1024


def kept_partition(out: Path) -> collections.Counter:
    """The kept rows' triples, from the files the committed manifest lists."""
    import pyarrow.parquet as pq

    from alpagasus_ray.config import StorageConfig
    from alpagasus_ray.filter.manifest import committed, listed_files
    from alpagasus_ray.io import filesystem

    fs, root = filesystem(str(out), StorageConfig())
    files = listed_files(root, committed(fs, root, str(out)))
    rows = collections.Counter()
    for f in (f for f in files if "decision=kept" in f):
        for r in pq.read_table(f, columns=list(TRIPLE)).to_pylist():
            rows[tuple(r[c] for c in TRIPLE)] += 1
    return rows


def from_messages(row: dict) -> tuple:
    """The triple a chat example came from (the input follows the instruction after a
    blank line, as `export` joins them; no Alpaca instruction here holds one)."""
    user, assistant = (t["content"] for t in row["messages"])
    instruction, _, given = user.partition("\n\n")
    return instruction, given, assistant


def load_back(fmt: str, path: Path) -> tuple[str, collections.Counter]:
    """The consumer's name and the triples it reads from `path`."""
    import datasets
    import pyarrow.parquet as pq

    datasets.disable_progress_bars()
    if fmt == "alpaca":
        rows = json.loads(path.read_text())
        return "json.load", collections.Counter(tuple(r[c] for c in TRIPLE) for r in rows)
    if fmt == "messages":
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        return 'datasets.load_dataset("json")', collections.Counter(map(from_messages, ds))
    if fmt == "hf":
        ds = datasets.load_from_disk(str(path))
        return "datasets.load_from_disk", collections.Counter(
            tuple(r[c] for c in TRIPLE) for r in ds
        )
    table = pq.read_table(path, columns=list(TRIPLE))
    return "pyarrow.parquet.read_table", collections.Counter(
        tuple(r[c] for c in TRIPLE) for r in table.to_pylist()
    )


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=SHARED_9K if SHARED_9K.exists() else None)
    ap.add_argument("--keep-fraction", type=float, default=0.17)
    args = ap.parse_args()
    from alpagasus_ray.tiny import build_tiny_model, synthetic_examples, write_jsonl

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    src = args.input or write_jsonl(synthetic_examples(9229, seed=3), work / "in.jsonl")
    out = work / "out"
    cfg = {
        "input": {"uri": str(src)},
        "output": {"uri": str(out)},
        "judge": {"model": str(build_tiny_model(work / "judge")), "min_score_mass": 0.0},
        "filter": {"keep_fraction": args.keep_fraction},
    }
    (work / "job.yaml").write_text(yaml.safe_dump(cfg))
    filter_s, filter_rss = run("filter", "--config", str(work / "job.yaml"))
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    want = kept_partition(out)
    print(f"input {src}: {sum(counts.values())} rows, {counts}; filter {filter_s:.0f} s, "
          f"peak RSS {filter_rss:.0f} MiB")  # fmt: skip
    print("\n| format | loaded back by | rows | equal to the kept partition | MiB | "
          "export s | export peak RSS MiB |\n|---|---|---:|---|---:|---:|---:|")  # fmt: skip
    names = {"alpaca": "kept.json", "messages": "kept.jsonl", "hf": "kept-hf"}
    for fmt, name in {**names, "parquet": "kept.parquet"}.items():
        dest = work / name
        secs, rss = run("export", str(out), "--format", fmt, "--to", str(dest))
        consumer, got = load_back(fmt, dest)
        same = "yes" if got == want else f"NO ({sum((got - want).values())} extra, "
        same += "" if got == want else f"{sum((want - got).values())} missing)"
        print(f"| {fmt} | `{consumer}` | {sum(got.values())} | {same} | {size_mib(dest):.1f} "
              f"| {secs:.1f} | {rss:.0f} |")  # fmt: skip
    print(f"\n(kept partition: {sum(want.values())} rows; files under {work})")


if __name__ == "__main__":
    main()
