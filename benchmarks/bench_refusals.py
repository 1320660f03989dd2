"""Time to fail: every mistake of the fail-fast list, run as a user would, prints a table.

    python benchmarks/bench_refusals.py

Each case is the `alpagasus-ray` command in a fresh process (Python start, imports and, where
the check needs a cluster, a local Ray), timed from launch to exit, with its exit code and
the last line it printed on stderr (on stdout for a command that succeeds). The last cases
are those around a run: the same command on a finished output, a second command on an output
a live run is writing, too few labels, someone else's folder, a damaged output. The tests
assert each line and code (`tests/test_preflight.py`, `test_resources.py`,
`test_runtime_errors.py`, `test_train.py`, `test_heartbeat.py`, `test_calibrate.py`,
`test_commit.py`); this script shows what a user sees and how long it takes. Everything is
local: inputs in a temporary folder, the tiny random judge, an S3 server (moto) on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from s3_server import start_s3_with_auth  # noqa: E402

from alpagasus_ray.demo import synthetic_examples  # noqa: E402

ROWS = [
    {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
    {"instruction": "Name a colour.", "output": "Blue."},
]


def cli(*args: str) -> tuple[int, str, float]:
    """(exit code, last line, seconds) of `alpagasus-ray ARGS` in a fresh process: the last
    line on stderr, or on stdout for a command that succeeds (a no-op says so there)."""
    cmd = [sys.executable, "-m", "alpagasus_ray.cli", *args]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    said = done.stdout if done.returncode == 0 else done.stderr
    lines = said.strip().splitlines() or [""]
    return done.returncode, lines[-1], time.monotonic() - start


class Cases:
    """The mistakes, each a method that sets up its inputs under `root` and returns the
    CLI arguments."""

    def __init__(self, root: Path, judge: Path, s3_endpoint: str):
        self.root, self.judge, self.s3, self.outputs = root, judge, s3_endpoint, 0
        self.held: list[subprocess.Popen] = []  # runs kept live for a case, ended at the end
        self._done: tuple[list[str], Path] | None = None
        self.jsonl = root / "rows.jsonl"
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        self.config = root / "job.yaml"
        self.config.write_text("filter: {threshold: 4.5}\n")

    def _filter(self, src: Path | str, *sets: str, model: Path | str | None = None) -> list[str]:
        """A filter command with an output folder of its own (`sets` may replace it)."""
        self.outputs += 1
        args = ["filter", "--config", str(self.config), "--set", f"input.uri={src}"]
        args += ["--set", f"output.uri={self.root / f'out-{self.outputs}'}"]
        args += ["--set", f"judge.model={model or self.judge}"]
        for item in sets:
            args += ["--set", item]
        return args

    def _small(self) -> tuple[list[str], Path]:
        """A filter command on 30 rows with the tiny judge, and its output folder."""
        src = self.root / f"small-{self.outputs}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in synthetic_examples(30, seed=1)))
        args = self._filter(src, "judge.min_score_mass=0.0", "judge.num_cpus_per_replica=0.5",
                            "filter.threshold=2.0", "ray.num_cpus=2")  # fmt: skip
        return args, self.root / f"out-{self.outputs}"

    def _finished(self) -> tuple[list[str], Path]:
        """A finished output of `_small` (made once): its command and folder."""
        if self._done is None:
            self._done = self._small()
            code, line, _ = cli(*self._done[0])
            assert code == 0, line
        return self._done

    def missing_input(self) -> list[str]:
        return self._filter(self.root / "typo.jsonl")

    def bad_config_value(self) -> list[str]:
        return self._filter(self.jsonl, "judge.mode=logprob")

    def parquet_without_the_mapped_column(self) -> list[str]:
        src = self.root / "rows.parquet"
        pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": "b", "ctx": "c"}]), src)
        return self._filter(src, "input.columns.input=context")

    def parquet_without_the_output_column(self) -> list[str]:
        src = self.root / "no-output.parquet"
        pq.write_table(pa.Table.from_pylist([{"instruction": "a", "response": "b"}]), src)
        return self._filter(src)

    def mapping_typo_on_json_lines(self) -> list[str]:
        return self._filter(self.jsonl, "input.columns.instruction=instrution")

    def judge_folder_missing(self) -> list[str]:
        return self._filter(self.jsonl, model=self.root / "no-such-model")

    def judge_is_no_hub_id(self) -> list[str]:
        return self._filter(self.jsonl, model="meta llama 8b!")

    def judge_folder_without_a_tokenizer(self) -> list[str]:
        (self.root / "empty-model").mkdir()
        return self._filter(self.jsonl, model=self.root / "empty-model")

    def judge_tokenizer_without_score_digits(self) -> list[str]:
        from helpers import save_digitless_tokenizer

        folder = save_digitless_tokenizer(self.root / "no-digits")
        return self._filter(self.jsonl, model=folder)

    def corrupt_parquet_footer(self) -> list[str]:
        src = self.root / "broken.parquet"
        src.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
        return self._filter(src)

    def corrupt_parquet_file_after_the_first(self) -> list[str]:
        folder = self.root / "shards"
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist(ROWS[:1]), folder / "a.parquet")
        (folder / "b.parquet").write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
        return self._filter(folder, "judge.num_cpus_per_replica=0.5", "ray.num_cpus=2")

    def output_under_a_file(self) -> list[str]:
        (self.root / "a-file").write_text("x")
        return self._filter(self.jsonl, f"output.uri={self.root / 'a-file' / 'out'}")

    def non_empty_output_without_overwrite(self) -> list[str]:
        taken = self.root / "taken"
        taken.mkdir()
        (taken / "result.parquet").write_text("earlier work")
        return self._filter(self.jsonl, f"output.uri={taken}")

    def gpu_replica_on_a_cluster_without_gpus(self) -> list[str]:
        return self._filter(self.jsonl, "judge.num_gpus_per_replica=1", "ray.num_cpus=2")

    def replicas_that_leave_no_cpu_for_reading(self) -> list[str]:
        return self._filter(self.jsonl, "judge.replicas=2", "judge.num_cpus_per_replica=0.9",
                           "ray.num_cpus=2")  # fmt: skip

    def api_key_variable_not_set(self) -> list[str]:
        return self._filter(self.jsonl, "judge.engine=openai", "judge.model=gpt-4o-mini",
                           "judge.api.base_url=http://127.0.0.1:9/v1",
                           "judge.api.api_key_env=NO_SUCH_KEY_VARIABLE")  # fmt: skip

    def api_url_that_does_not_answer(self) -> list[str]:
        return self._filter(self.jsonl, "judge.engine=openai", "judge.model=gpt-4o-mini",
                           "judge.api.base_url=http://127.0.0.1:9/v1",
                           "judge.api.api_key_env=null", "judge.api.max_retries=0")  # fmt: skip

    def s3_with_a_wrong_key(self) -> list[str]:
        return self._filter("s3://corpus/in/", f"storage.endpoint_url={self.s3}",
                           "storage.access_key_id=AKIAWRONG", "storage.secret_access_key=wrong",
                           "storage.region=us-east-1")  # fmt: skip

    def train_on_an_unfinished_filter_output(self) -> list[str]:
        out = self.root / "killed-run"
        (out / "data" / "decision=kept").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(ROWS[:1]), out / "data" / "decision=kept" / "a.parquet")
        config = self.root / "train.yaml"
        config.write_text(f"data: {{uri: {out}}}\nmodel: {{name: {self.judge}}}\n"
                          f"run: {{storage_path: {self.root / 'runs'}}}\n")  # fmt: skip
        return ["train", "--config", str(config)]

    # Around a run: a rerun, a second command, labels, someone else's folder, a damaged output.

    def the_same_filter_again_on_its_finished_output(self) -> list[str]:
        return self._finished()[0]

    def a_second_filter_on_an_output_a_run_is_writing(self) -> list[str]:
        args, out = self._small()
        held = [sys.executable, str(TESTS / "crash_driver.py"), "hold:filter.job.write_rows"]
        self.held.append(
            subprocess.Popen(
                [*held, *args],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 600  # fmt: skip
        while not (out / "heartbeat.json").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        return args

    def calibrate_with_three_matched_labels(self) -> list[str]:
        out = self._finished()[1]
        labels = self.root / "three-labels.jsonl"
        labels.write_text("".join(json.dumps({"index": i, "good": i == 0}) + "\n"
                                  for i in range(3)))  # fmt: skip
        return ["calibrate", str(out), "--labels", str(labels), "--label", "good",
                "--to", str(self.root / "calibration")]  # fmt: skip

    def train_on_someone_elses_parquet_folder(self) -> list[str]:
        folder = self.root / "their-files"
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist([{"user": 1, "text": "x"}]), folder / "a.parquet")
        config = self.root / "train-theirs.yaml"
        config.write_text(f"data: {{uri: {folder}}}\nmodel: {{name: {self.judge}}}\n"
                          f"run: {{storage_path: {self.root / 'runs'}}}\n")  # fmt: skip
        return ["train", "--config", str(config)]

    def a_listed_data_file_removed_by_hand(self) -> list[str]:
        damaged = self.root / "damaged"
        shutil.copytree(self._finished()[1], damaged)
        next((damaged / "data").rglob("*.parquet")).unlink()
        return ["report", str(damaged)]

    def threshold_not_a_number(self) -> list[str]:
        return self._filter(self.jsonl, "filter.threshold=nan")


def main() -> None:
    from alpagasus_ray.demo import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server, endpoint = start_s3_with_auth()
        cases = Cases(root, build_tiny_model(root / "tiny-judge"), endpoint)
        runs: list[tuple[str, Callable[[], list[str]]]] = [
            (name.replace("_", " "), getattr(cases, name))
            for name in Cases.__dict__
            if not name.startswith("_")
        ]
        print("| mistake | exit | s | the line |\n|---|---:|---:|---|")
        try:
            for label, make in runs:
                code, line, seconds = cli(*make())
                line = line.replace(str(root), "<tmp>").replace("|", "\\|")
                print(f"| {label} | {code} | {seconds:.1f} | `{line}` |", flush=True)
        finally:
            for held in cases.held:  # the run a case kept live, by its own process group
                os.killpg(held.pid, signal.SIGKILL)
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
