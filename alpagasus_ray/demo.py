"""The embedded default: a tiny randomly initialised judge and a synthetic instruction set,
built offline, and the filter job run on them (`alpagasus-ray demo`).

The tests and the CPU benchmarks use the same model and rows, so that everything runs on a
fresh machine with no hub access. The model's judgements are random: it exercises the real
pipeline, not the quality of any judge.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alpagasus_ray.core.config import apply_overrides, build_config
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.text.prompts import FENCE_NOTE, PREFIX_TRIPLET, RATING_PROMPTS, SYSTEM_PROMPT

if TYPE_CHECKING:
    from alpagasus_ray.filter.manifest import Manifest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

_COUNTRIES = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Norway": "Oslo",
    "India": "New Delhi",
    "Chile": "Santiago",
}
_WORDS = {"cat": "chat", "house": "maison", "water": "eau", "book": "livre", "tree": "arbre"}
_TOPICS = ["sleep", "exercise", "reading", "saving money", "learning a language", "cooking"]


def synthetic_examples(n: int, seed: int = 0, unique: bool = False) -> list[dict[str, Any]]:
    """Alpaca-shaped rows (instruction/input/output/category), some answers deliberately wrong.
    Drawn from a few templates, so rows repeat (exact duplicates) unless `unique` numbers
    every instruction."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 4
        wrong = rng.random() < 0.3
        if kind == 0:
            country = rng.choice(list(_COUNTRIES))
            answer = rng.choice(list(_COUNTRIES.values())) if wrong else _COUNTRIES[country]
            row = ("What is the capital of the given country?", country, answer, "geography")
        elif kind == 1:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            row = ("Add the two numbers.", f"{a} and {b}", str(a + b + (wrong * 7)), "math")
        elif kind == 2:
            word = rng.choice(list(_WORDS))
            answer = "unknown" if wrong else _WORDS[word]
            row = ("Translate the word into French.", word, answer, "translation")
        else:
            topic = rng.choice(_TOPICS)
            answer = (
                "I like turtles."
                if wrong
                else f"Make {topic} a daily habit, start small and track your progress."
            )
            row = (f"Give one tip about {topic}.", "", answer, "advice")
        instruction, inp, output, category = row
        instruction = f"{instruction} (#{i})" if unique else instruction
        rows.append(
            {"instruction": instruction, "input": inp, "output": output, "category": category}
        )
    return rows


def _corpus(extra_texts: list[str]) -> list[str]:
    texts = [SYSTEM_PROMPT, FENCE_NOTE, PREFIX_TRIPLET, *RATING_PROMPTS.values()]
    for row in synthetic_examples(400, seed=1):
        texts.extend(str(v) for v in row.values())
    texts.extend(" ".join(str(d) for d in range(100)) for _ in range(5))
    return texts + extra_texts


def build_tiny_tokenizer(extra_texts: list[str] | None = None, vocab_size: int = 1024) -> Any:
    """A byte-level BPE (any text encodes, nothing is <unk>) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(extra_texts or []), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    path: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 2048,
    chat_template: bool = True,
    initializer_range: float = 0.5,
) -> Path:
    """Save a tiny random Llama and its tokenizer under `path` (reused if already there).

    The wide `initializer_range` spreads the random judge's scores over 0-5, so small runs
    fill both the kept and the rejected partitions.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    tokenizer = build_tiny_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():  # a bar for one tiny shard is noise in the demo's output
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


# The demo's threshold: a random judge's scores sit mid-scale, so both partitions fill.
DEMO_THRESHOLD = 2.5


def demo_rows(n: int) -> list[dict[str, Any]]:
    """Synthetic examples plus one of each kind of bad row, to show quarantine at work."""
    rows: list[Any] = list(synthetic_examples(n, seed=0))
    rows += [
        {"instruction": "Name a colour.", "input": "", "output": None, "category": "bad"},
        {"instruction": "", "input": "", "output": "Blue.", "category": "bad"},
        {"instruction": "Count to three.", "input": "", "output": 123, "category": "bad"},
        {"instruction": "Say hi.", "input": "", "category": "bad"},
        {
            "instruction": "Summarise.",
            "input": "word " * 3000,
            "output": "Words.",
            "category": "bad",
        },
    ]
    return rows


# Small actors, so that the demo runs on a 2-CPU machine too.
SMALL_ENGINE = {"batch_size": 32, "num_cpus_per_replica": 0.5}


def demo_config(root: Path, model_dir: Path, data: Path, overrides: list[str]) -> FilterJobConfig:
    base = {
        "input": {"uri": str(data)},
        "output": {"uri": str(root / "filtered"), "overwrite": True},
        "judge": {"model": str(model_dir), "min_score_mass": 0.0, **SMALL_ENGINE},
        "filter": {"threshold": DEMO_THRESHOLD},
    }
    return build_config(FilterJobConfig, apply_overrides(base, overrides))


DEMO_NOTE = (
    "The demo: tiny random models as judge, base model and pairwise judge, on synthetic rows. "
    "It shows every step working; its numbers mean nothing."
)


def demo_experiment_config(
    root: Path, model_dir: Path, data: Path, overrides: list[str]
) -> dict[str, Any]:
    """The experiment on the demo's rows, small: one epoch, three questions of each set."""
    base = {
        "experiment": {"uri": str(root / "experiment"), "note": DEMO_NOTE},
        "input": {"uri": str(data)},
        "judge": {"model": str(model_dir), "min_score_mass": 0.0, **SMALL_ENGINE},
        "filter": {"threshold": DEMO_THRESHOLD},
        "finetune": {
            "model": {"name": str(model_dir)},
            "train": {
                "epochs": 1,
                "global_batch_size": 4,
                "per_device_batch_size": 2,
                "max_length": 256,
            },
            "run": {"num_workers": 2},
        },
        "evaluation": {
            "judge": {"model": str(model_dir), "max_new_tokens": 16, **SMALL_ENGINE},
            "generation": {"max_new_tokens": 16, **SMALL_ENGINE},
            "limit": 3,
        },
    }
    return apply_overrides(base, overrides)


def demo_inputs(root: Path, rows: int) -> tuple[Path, Path]:
    """(judge, input): the tiny random model and the demo's rows, built under `root`."""
    model_dir = build_tiny_model(root / "tiny-judge")
    data = root / "input" / "examples.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in demo_rows(rows)] + ['{"instruction": "broken line"']
    text = "\n".join(lines) + "\n"
    if not data.exists() or data.read_text() != text:  # the same file stays the same input
        data.write_text(text)
    return model_dir, data


def run_demo(output: str | Path, rows: int, overrides: list[str]) -> Manifest:
    """Build the judge and the input under `output`, then run the real filter job on them."""
    from alpagasus_ray.filter.job import run_filter

    root = Path(output).resolve()
    model_dir, data = demo_inputs(root, rows)
    cfg = demo_config(root, model_dir, data, overrides)
    print(
        f"demo: judge = tiny RANDOM model at {model_dir} (its scores are noise; threshold "
        f"{cfg.filter.threshold:g} instead of the paper's 4.5 so both partitions fill).\n"
        "      For real filtering: alpagasus-ray filter --config jobs/configs/local.yaml "
        "--set judge.model=<instruct model id or path>"
    )
    return run_filter(cfg)


def run_demo_experiment(output: str | Path, rows: int, overrides: list[str]) -> dict[str, Any]:
    """The paper's experiment on the demo's rows and tiny models; its config is written
    beside it (experiment.yaml), so that the same experiment reruns as a config of its own."""
    import yaml

    from alpagasus_ray.experiment.config import ExperimentConfig
    from alpagasus_ray.experiment.job import run_experiment

    root = Path(output).resolve()
    model_dir, data = demo_inputs(root, rows)
    data_cfg = demo_experiment_config(root, model_dir, data, overrides)
    cfg = build_config(ExperimentConfig, data_cfg)
    (root / "experiment.yaml").write_text(yaml.safe_dump(data_cfg, sort_keys=False))
    print(f"demo experiment: {DEMO_NOTE}\n      Its config: {root / 'experiment.yaml'} "
          "(alpagasus-ray experiment --config)")  # fmt: skip
    return run_experiment(cfg)
