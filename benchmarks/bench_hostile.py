"""The data-safety cases, done as a hostile user would: each prints its exit code, last line,
time and what the output holds afterwards.

    python benchmarks/bench_hostile.py

Every command is `alpagasus-ray` in a fresh process (a local Ray, the tiny random judge,
files in a temporary folder). A kill is a SIGKILL of the command's process group, at a
step named by `tests/crash_driver.py` where it must hit an exact step. The tests assert
each outcome (`tests/test_commit.py`, `test_overwrite.py`, `test_preflight.py`,
`test_filter_job.py`, `test_resume.py`); this script shows what a user sees.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / "tests"))

from alpagasus_ray.demo import build_tiny_model, synthetic_examples  # noqa: E402


def run(*args: str, kill_at: str | None = None) -> tuple[int, str, float]:
    """(exit code, last stderr line, seconds) of `alpagasus-ray ARGS`, or of the command
    killed at `kill_at` (`tests/crash_driver.py`)."""
    head = [str(HERE / "tests" / "crash_driver.py"), kill_at] if kill_at else ["-m"]
    cmd = [sys.executable, *head, *([] if kill_at else ["alpagasus_ray.cli"]), *args]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    _, err = proc.communicate(timeout=900)
    with contextlib.suppress(ProcessLookupError):  # what a killed driver left running
        os.killpg(proc.pid, signal.SIGKILL)
    lines = err.strip().splitlines() or [""]
    return proc.returncode, lines[-1][:240], time.monotonic() - start


def holds(out: Path) -> str:
    """What a reader finds: the committed manifest's status and counts, or none."""
    manifest = out / "manifest.json"
    if not manifest.exists():
        return "no manifest (unfinished: readers refuse it)"
    m = json.loads(manifest.read_text())
    return f"{m['status']}, {m['rows_read']} rows read, counts {m['counts']}"


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    judge = build_tiny_model(root / "judge")
    config = root / "job.yaml"
    config.write_text("filter: {threshold: 2.0}\njudge: {min_score_mass: 0.0, batch_size: 8}\n")

    def job(src: Path, out: Path, *sets: str) -> list[str]:
        args = ["filter", "--config", str(config), "--set", f"input.uri={src}"]
        args += ["--set", f"output.uri={out}", "--set", f"judge.model={judge}"]
        return args + [a for s in sets for a in ("--set", s)]

    results = []

    # 1. overwrite with the output at the input's folder, then at its parent
    src = root / "in1" / "data.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps(r) + "\n" for r in synthetic_examples(20, seed=1)))
    for where, out in (("its folder", src.parent), ("its parent", root)):
        code, line, secs = run(*job(src, out, "output.overwrite=true"))
        results.append(
            (
                f"1. overwrite, output = the input's {where}",
                code,
                line,
                secs,
                f"input intact: {src.exists()}",
            )
        )

    # 2. a JSON array cut half way; then with on_unreadable_file=skip
    records = synthetic_examples(300, seed=2)
    text = json.dumps(records)
    cut = root / "cut" / "alpaca_data.json"
    cut.parent.mkdir()
    cut.write_text(text[: len(text) // 2])
    out = root / "out2"
    code, line, secs = run(*job(cut.parent, out))
    results.append(("2. a JSON array cut half way", code, line, secs, holds(out)))
    good = cut.parent / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in records[:10]))
    code, line, secs = run(*job(cut.parent, out, "input.on_unreadable_file=skip"))
    m = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    skipped = [s["path"].rsplit("/", 1)[-1] for s in m.get("skipped_files", [])]
    results.append(
        (
            "2b. the same with on_unreadable_file=skip",
            code,
            line,
            secs,
            f"{holds(out)}; skipped {skipped}",
        )
    )

    # 3. a run killed half way, its first 50 lines edited, the same command again
    src3 = root / "in3.jsonl"
    src3.write_text("".join(json.dumps(r) + "\n" for r in synthetic_examples(400, seed=3)))
    out = root / "out3"
    run(*job(src3, out), kill_at="after:filter.job.settle_duplicates")
    lines = src3.read_text().splitlines(keepends=True)
    src3.write_text("".join(x.replace("a", "b") for x in lines[:50]) + "".join(lines[50:]))
    code, line, secs = run(*job(src3, out))
    results.append(("3. killed, 50 lines edited, rerun", code, line, secs, holds(out)))

    # 4. a finished output with an engine_error row: a plain rerun, then --retry-failed
    src4 = root / "in4.jsonl"
    src4.write_text("".join(json.dumps(r) + "\n" for r in synthetic_examples(40, seed=4)))
    out = root / "out4"
    run(*job(src4, out))
    from test_commit import with_an_engine_error  # the row an API failure leaves

    doctored = root / "out4-failed"
    with_an_engine_error(out, doctored)
    code, line, secs = run(*job(src4, doctored))
    results.append(("4. engine_error rows, plain rerun", code, line, secs, holds(doctored)))
    code, line, secs = run(*job(src4, doctored), "--retry-failed")
    m = json.loads((doctored / "manifest.json").read_text())
    results.append(
        (
            "4b. the same with --retry-failed",
            code,
            line,
            secs,
            f"{holds(doctored)}; rows judged again {m['attempts'][-1]['rows_written']}",
        )
    )

    # 5. a re-decision killed once its manifest is committed, before its old files go
    out5 = out
    code, line, secs = run(
        *job(src4, out5, "filter.threshold=2.6"), kill_at="after:filter.redecide.commit"
    )
    on_disk = sum(pq.ParquetFile(p).metadata.num_rows for p in (out5 / "data").rglob("*.parquet"))
    results.append(
        (
            "5. re-decision killed after its commit",
            code,
            "(killed)",
            secs,
            f"{holds(out5)}; rows on disk {on_disk} (old files not yet removed)",
        )
    )
    code, line, secs = run(*job(src4, out5, "filter.threshold=2.6"))
    on_disk = sum(pq.ParquetFile(p).metadata.num_rows for p in (out5 / "data").rglob("*.parquet"))
    results.append(
        ("5b. the same command again", code, line, secs, f"{holds(out5)}; rows on disk {on_disk}")
    )

    # 6. JSON lines whose extra column is null, then int, then string
    src6 = root / "in6.jsonl"
    rows = synthetic_examples(30, seed=6)
    for i, r in enumerate(rows):
        r["meta"] = [None, 7, "seven", {"k": [1]}][i // 8 % 4]
    src6.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "out6"
    code, line, secs = run(*job(src6, out))
    results.append(("6. extra column null/int/str/dict", code, line, secs, holds(out)))

    print("| case | exit | last line | s | what the output holds |")
    print("|---|---|---|---|---|")
    for case, code, line, secs, state in results:
        print(f"| {case} | {code} | `{line}` | {secs:.1f} | {state} |")


if __name__ == "__main__":
    main()
