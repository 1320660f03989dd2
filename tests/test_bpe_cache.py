"""The word cache gives exactly the tokenizer's ids, on real text and on adversarial text, for
every pre-tokenizer it accepts, and refuses the pipelines it does not reproduce."""

import json
import random

import pytest
from tokenizers import Tokenizer

from alpagasus_ray.text.bpe_cache import LLAMA3_PATTERN, QWEN2_PATTERN, CachedBPE
from alpagasus_ray.text.models import load_tokenizer

TRICKY = [
    *"aZq09 '\t\n\r.,-#<>|_:;!?()[]{}\"`~",
    *[" ", "  ", "\n\n", "\r\n", " \n", "\t ", "123", "4567", "'s", "'S", "'ll", "DON'T"],
    *["\u00a0", "\u3000", "\u2028", "\x0b", "\x0c", "\x1c", "\x00", "\x7f", "\x85"],
    *["é", "e\u0301", "\u0301", "ß", "Ω", "漢字", "🙂", "👩\u200d💻", "’", "—", "٣", "½", "Ⅻ"],
    *["<s>", "</s>", "<|user|>", "<|im|>", "<|im|>x", "<|im|>y", "<|im_end|>", "<|im_"],
]


def tricky_texts(n: int, seed: int = 0) -> list[str]:
    """Random strings of whitespace, digits, apostrophes, non-ASCII letters, combining marks,
    control characters and special-token spellings, side by side in every order."""
    rng = random.Random(seed)
    return ["".join(rng.choices(TRICKY, k=rng.randint(0, 30))) for _ in range(n)]


def alpaca_texts(shared_data) -> list[str]:
    rows = json.loads((shared_data / "alpaca_random_9k.json").read_text())
    return [f"{r['instruction']}\n\n{r['input']}\n\n### Response:\n{r['output']}" for r in rows]


def variant(tokenizer, **changes) -> Tokenizer:
    """The same vocabulary and merges with another normalizer or pre-tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    return Tokenizer.from_str(json.dumps({**spec, **changes}))


def byte_level(tokenizer, **changes) -> dict:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"]
    assert spec["type"] == "ByteLevel"
    return {**spec, **changes}


def split_then_bytes(tokenizer, pattern: str) -> dict:
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"}
    return {
        "type": "Sequence",
        "pretokenizers": [{**split, "invert": False}, byte_level(tokenizer, use_regex=False)],
    }


def assert_exact(backend: Tokenizer, texts: list[str], **kwargs) -> CachedBPE:
    cache = CachedBPE.from_tokenizer(backend, **kwargs)
    assert cache is not None, "the pipeline should be reproduced"
    want = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    assert [cache.encode(t) for t in texts] == want
    assert [cache.encode(t) for t in texts] == want  # again, now from the cache
    return cache


@pytest.fixture(scope="module")
def tok(shared_data):
    """A byte-level BPE trained without splitting, so that its merges span whitespace, digits,
    letters and punctuation alike: any piece cut differently from the tokenizer's own split
    shows in the ids. Two added tokens, one the other's prefix, test the longest match."""
    from tokenizers import models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    specials = ["<s>", "</s>", "<|user|>", "<|im|>", "<|im|>x"]
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = alpaca_texts(shared_data)[:3000] + tricky_texts(20000, seed=9)
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_the_tiny_judges_tokenizer_takes_the_cache(tiny_judge, shared_data):
    backend = load_tokenizer(str(tiny_judge)).backend_tokenizer
    assert_exact(backend, alpaca_texts(shared_data)[:1000] + tricky_texts(500))


def test_a_byte_level_tokenizer_on_real_and_adversarial_text(tok, shared_data):
    texts = alpaca_texts(shared_data) + tricky_texts(3000)
    assert any(not t.isascii() for t in texts[:9000]), "real rows with non-ASCII text"
    cache = assert_exact(tok.backend_tokenizer, texts)
    assert cache.cuts and len(cache.words) > 1000


@pytest.mark.parametrize(
    "name", ["digits", "digit-runs", "llama3", "qwen2+nfc", "unknown-split", "nfkc"]
)
def test_each_accepted_pipeline_is_exact(tok, shared_data, name):
    nfc = {"type": "NFC"}
    changes = {
        "digits": {
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level(tok)],
            }
        },
        "digit-runs": {
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": False}, byte_level(tok)],
            }
        },
        "llama3": {"pre_tokenizer": split_then_bytes(tok, LLAMA3_PATTERN)},
        "qwen2+nfc": {"normalizer": nfc, "pre_tokenizer": split_then_bytes(tok, QWEN2_PATTERN)},
        # A pattern not known to be cut-safe (gaps between matches, too): no cuts at spaces.
        "unknown-split": {"pre_tokenizer": split_then_bytes(tok, r"[a-z]+|\p{Lu}\p{L}*")},
        "nfkc": {"normalizer": {"type": "NFKC"}},
    }[name]
    texts = alpaca_texts(shared_data)[:3000] + tricky_texts(3000, seed=1)
    cache = assert_exact(variant(tok, **changes), texts)
    assert cache.cuts == (name != "unknown-split")


def test_the_cache_is_bounded_and_still_exact(tok, shared_data):
    texts = alpaca_texts(shared_data)[:500]
    cache = assert_exact(tok.backend_tokenizer, texts, max_words=100)
    assert len(cache.words) == 100


REFUSED = ["prefix-space", "metaspace", "lowercase", "dropout", "stripped-token", "word-level"]


@pytest.mark.parametrize("name", [*REFUSED, "specials-as-text"])
def test_pipelines_it_does_not_reproduce_are_refused(tok, name):
    spec = json.loads(tok.backend_tokenizer.to_str())
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}
    first, *rest = spec["added_tokens"]
    changes = {
        "prefix-space": {"pre_tokenizer": byte_level(tok, add_prefix_space=True)},
        "metaspace": {"pre_tokenizer": {**metaspace, "split": True}},
        "lowercase": {"normalizer": {"type": "Lowercase"}},
        "dropout": {"model": {**spec["model"], "dropout": 0.1}},
        "stripped-token": {"added_tokens": [{**first, "lstrip": True}, *rest]},
        "word-level": {"model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"}},
    }.get(name, {})
    backend = variant(tok, **changes)
    backend.encode_special_tokens = name == "specials-as-text"
    assert CachedBPE.from_tokenizer(backend) is None
    assert CachedBPE.from_tokenizer(object()) is None  # not a fast tokenizer at all


def test_a_cut_it_offers_splits_the_ids_exactly(tok, shared_data):
    """Where `cut` says text can be cut, the two parts' ids are the whole's (the prompt
    encoder tokenizes the fixed end of a prompt once on this promise)."""
    cache = CachedBPE.from_tokenizer(tok.backend_tokenizer)
    texts = alpaca_texts(shared_data)[:3000] + tricky_texts(3000, seed=2)
    cuts = 0
    for text in texts:
        at = cache.cut(text)
        if at is None:
            assert not any(
                text[k] == " " and "!" <= text[k - 1] <= "~" for k in range(1, len(text))
            )
            continue
        cuts += 1
        assert cache.encode(text[:at]) + cache.encode(text[at:]) == cache.encode(text), text
    assert cuts > 3000


def test_no_cut_where_an_added_token_holds_a_space(tok):
    backend = variant(tok)
    backend.add_special_tokens(["<|a b|>"])
    cache = CachedBPE.from_tokenizer(backend)
    assert cache is not None and not cache.cuts and cache.cut("x <|a b|> y") is None
    assert cache.encode("x <|a b|> y é") == backend.encode("x <|a b|> y é").ids
