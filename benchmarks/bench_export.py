"""Export a finished output in every format and load it back with the library that reads it.

    python benchmarks/bench_export.py [--input FILE] [--keep-fraction 0.17] [--output DIR]

One filter run (the tiny random judge, `filter.keep_fraction`, since its scores sit below
4.5) on FILE (default: the shared Alpaca 9k beside the repo, else 9,229 synthetic rows), then
`alpagasus-ray export` of its kept rows as Alpaca JSON, chat messages JSONL, a `datasets`
folder and one Parquet file, each in a fresh process. Each export is loaded back with its
consumer (`json`, `datasets.load_dataset("json")`, `datasets.load_from_disk`, pyarrow) and
compared, row for row, with the kept partition the manifest lists. Peak RSS is the export
process's own high-water mark, against the filter run's. `--output` exports a
finished output already there instead (the filter of the 9k takes minutes on a laptop).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # helpers.py
HERE = Path(__file__).resolve().parents[1]
SHARED_9K = HERE.parent / "shared" / "data" / "alpaca_random_9k.json"
TRIPLE = ("instruction", "input", "output")


def run(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of `alpagasus-ray ARGS` in a fresh process. The peak is the
    process's own high-water mark (`VmHWM`), read until it exits: `wait4`'s `ru_maxrss` would
    count this script's own memory too, since a child spawned with vfork starts in it."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "alpagasus_ray.cli", *args])
    peak_kib = 0
    while proc.poll() is None:
        with contextlib.suppress(OSError):  # gone, or a zombie without VmHWM: the last stands
            found = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text())
            peak_kib = max(peak_kib, int(found[1]) if found else 0)
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"alpagasus-ray {' '.join(args)}: exit {proc.returncode}")
    return time.monotonic() - start, peak_kib / 1024


def kept_partition(out: Path) -> collections.Counter:
    """The kept rows' triples, from the files the committed manifest lists."""
    import pyarrow.parquet as pq

    from alpagasus_ray.core.config import StorageConfig
    from alpagasus_ray.data.io import filesystem
    from alpagasus_ray.filter.manifest import committed, listed_files

    fs, root = filesystem(str(out), StorageConfig())
    files = listed_files(root, committed(fs, root, str(out)))
    rows = collections.Counter()
    for f in (f for f in files if "decision=kept" in f):
        for r in pq.read_table(f, columns=list(TRIPLE)).to_pylist():
            rows[tuple(r[c] for c in TRIPLE)] += 1
    return rows


def as_chat(triples: collections.Counter) -> collections.Counter:
    """The (user, assistant) turns `export` makes of each triple: the instruction, then the
    input after a blank line. Compared this way, since an instruction may hold a blank line
    itself (14 of the shared 9k's do), so a chat turn cannot be split back into a triple."""
    from alpagasus_ray.filter.export import messages

    chat = collections.Counter()
    for triple, n in triples.items():
        turns = messages(dict(zip(TRIPLE, triple, strict=True)), [], None)["messages"]
        chat[tuple(t["content"] for t in turns)] += n
    return chat


def load_back(fmt: str, path: Path) -> tuple[str, collections.Counter]:
    """The consumer's name and the triples it reads from `path`."""
    import datasets
    import pyarrow.parquet as pq

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    if fmt == "alpaca":
        rows = json.loads(path.read_text())
        return "json.load", collections.Counter(tuple(r[c] for c in TRIPLE) for r in rows)
    if fmt == "messages":
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        turns = (tuple(t["content"] for t in r["messages"]) for r in ds)
        return 'datasets.load_dataset("json")', collections.Counter(turns)
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
    ap.add_argument("--output", type=Path, help="a finished output to export, not filtered here")
    args = ap.parse_args()
    from helpers import write_jsonl

    from alpagasus_ray.demo import build_tiny_model, synthetic_examples

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    out = args.output or work / "out"
    if not args.output:
        src = args.input or write_jsonl(work / "in.jsonl", synthetic_examples(9229, seed=3))
        cfg = {
            "input": {"uri": str(src)},
            "output": {"uri": str(out)},
            "judge": {"model": str(build_tiny_model(work / "judge")), "min_score_mass": 0.0},
            "filter": {"keep_fraction": args.keep_fraction},
        }
        (work / "job.yaml").write_text(yaml.safe_dump(cfg))
        filter_s, filter_rss = run("filter", "--config", str(work / "job.yaml"))
        print(f"filter of {src}: {filter_s:.0f} s, driver peak RSS {filter_rss:.0f} MiB")
    manifest = json.loads((out / "manifest.json").read_text())
    kept = kept_partition(out)
    print(f"output {out}: {manifest['rows_read']} rows read, {manifest['counts']}")
    print("\n| format | loaded back by | rows | equal to the kept partition | MiB | "
          "export s | export peak RSS MiB |\n|---|---|---:|---|---:|---:|---:|")  # fmt: skip
    alpaca_rss = 0.0
    names = {"alpaca": "kept.json", "messages": "kept.jsonl", "hf": "kept-hf"}
    for fmt, name in {**names, "parquet": "kept.parquet"}.items():
        dest = work / name
        secs, rss = run("export", str(out), "--format", fmt, "--to", str(dest))
        alpaca_rss = rss if fmt == "alpaca" else alpaca_rss
        consumer, got = load_back(fmt, dest)
        want = as_chat(kept) if fmt == "messages" else kept
        same = "yes" if got == want else f"NO ({sum((got - want).values())} extra, "
        same += "" if got == want else f"{sum((want - got).values())} missing)"
        print(f"| {fmt} | `{consumer}` | {sum(got.values())} | {same} | {size_mib(dest):.1f} "
              f"| {secs:.1f} | {rss:.0f} |")  # fmt: skip
    # Memory with the rows: every decision's rows (the whole output) against the kept ones.
    every, every_rss = run("export", str(out), "--format", "alpaca", "--decision", "all",
                           "--to", str(work / "all.json"))  # fmt: skip
    rows_all = len(json.loads((work / "all.json").read_text()))
    print(
        f"\nalpaca, --decision all: {rows_all} rows ({rows_all / sum(kept.values()):.2f}x the "
        f"kept), {size_mib(work / 'all.json'):.1f} MiB, {every:.1f} s, peak RSS "
        f"{every_rss:.0f} MiB ({every_rss / alpaca_rss:.2f}x the kept export's)"
    )
    print(f"(kept partition: {sum(kept.values())} rows; files under {work})")


if __name__ == "__main__":
    main()
