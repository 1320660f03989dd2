"""The HF engine on a real-shape random-weight judge against the prefill roofline; a table.

    python benchmarks/bench_hf_roofline.py --shape llama-3.1-8b   # on a GPU (bf16)
    python benchmarks/bench_hf_roofline.py --shape tiny            # a CPU smoke run

Needs only torch and transformers (no Ray, no vLLM, no weights: the model is built from its
config with random weights, which cost the same FLOPs as trained ones). Logprobs mode is one
prefill per example, so the roofline is peak FLOP/s / (2 x parameters x prompt tokens);
utilisation is measured examples/s over that. Prompts are the paper's rating prompt around
Alpaca-like examples, tokenized with the tiny offline tokenizer and mapped into the model's
vocabulary (the FLOPs depend on the token count, not the ids).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.demo import build_tiny_tokenizer, synthetic_examples
from alpagasus_ray.engines.hf import HFEngine
from alpagasus_ray.text.prompts import rating_prompt_ids

SHAPES = {
    "llama-3.1-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    "tiny": dict(
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
}
# Dense BF16 peak, TFLOP/s (no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def build_model(shape: str, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


class OffsetTokenizer:
    """The tiny tokenizer's score digits moved into the model's vocabulary, so the engine's
    score-token lookup works on a model whose own tokenizer is not here."""

    def __init__(self, tok, vocab: int):
        self.tok, self.vocab, self.pad_token_id = tok, vocab, tok.pad_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [t % self.vocab for t in self.tok.encode(text, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)

    tok = build_tiny_tokenizer()
    vocab = SHAPES[args.shape]["vocab_size"]
    rows = synthetic_examples(args.examples, seed=0)
    prompts = [[t % vocab for t in p] for p in rating_prompt_ids(tok, rows, "accuracy", "prefix")]
    model = build_model(args.shape, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    mean_tokens = statistics.mean(len(p) for p in prompts)
    flop_per_example = 2 * params * mean_tokens
    print(
        f"model: {args.shape} random weights, {params / 1e6:,.1f}M params, {dtype}; device: {gpu}"
        f"; {len(prompts)} prompts, {mean_tokens:.0f} tokens on average"
    )
    print()
    print("| micro-batch | examples/s | prompt tok/s | TFLOP/s | roofline ex/s | utilisation |")
    print("|---:|---:|---:|---:|---:|---:|")
    for mb in args.micro_batch:
        cfg = JudgeConfig(model="random", micro_batch_size=mb)
        engine = HFEngine(cfg, model=model, tokenizer=OffsetTokenizer(tok, vocab))
        engine.judge(prompts[:mb])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.judge(prompts)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rate = len(prompts) / seconds
        tflops = rate * flop_per_example / 1e12
        roof = peak * 1e12 / flop_per_example if peak else None
        roof_cell = f"{roof:,.1f}" if roof else "n/a"
        util = f"{rate / roof:.1%}" if roof else "n/a"
        print(
            f"| {mb} | {rate:,.2f} | {rate * mean_tokens:,.0f} | {tflops:,.1f} | {roof_cell} "
            f"| {util} |"
        )


if __name__ == "__main__":
    main()
