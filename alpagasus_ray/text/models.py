"""Loading tokenizers and causal LMs from a hub id or a local path, once per process."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@lru_cache(maxsize=4)
def load_tokenizer(name: str, trust_remote_code: bool = False, padding_side: str = "left") -> Any:
    """A fast tokenizer with a pad token (left padding: the answer position stays last)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    tok.padding_side = padding_side
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def model_max_len(name: str, tokenizer: Any, trust_remote_code: bool = False) -> int:
    """Context length: the model config's, else the tokenizer's when that one is real."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        config = None
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10_000_000:
        return value
    raise ValueError(f"cannot tell the context length of {name!r}; set judge.max_model_len")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    """bf16 on GPU, fp32 on CPU unless the config says otherwise."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, _DTYPES[dtype])


def load_causal_lm(
    name: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False
) -> Any:
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        name, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code
    )
    return model.to(device).eval()
