"""Hugging Face transformers judge: CPU or GPU, batched, length-sorted, left-padded."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.engines.base import JudgeEngine, JudgeOutput
from alpagasus_ray.engines.judgement import score_token_ids
from alpagasus_ray.text.models import load_causal_lm, load_tokenizer


class HFEngine(JudgeEngine):
    """`logprobs` mode: one forward pass per micro-batch and no decoding; `generate` mode:
    greedy decoding up to `max_new_tokens` (or to the end of the score's line), as the paper
    did through an API."""

    def __init__(self, cfg: JudgeConfig, model: Any = None, tokenizer: Any = None):
        super().__init__(cfg)
        import torch

        self.torch = torch
        self.tokenizer = tokenizer or load_tokenizer(
            cfg.tokenizer or cfg.model, cfg.trust_remote_code
        )
        self.model = model or load_causal_lm(
            cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code
        )
        self.device = next(self.model.parameters()).device
        # Generate mode parses text: its scale need not be one token a score.
        logprobs = cfg.mode == "logprobs"
        self._score_tokens = score_token_ids(self.tokenizer, cfg.scale) if logprobs else {}
        self._candidates = torch.tensor(sorted(self._score_tokens), device=self.device)

    @property
    def score_tokens(self) -> dict[int, int]:
        return self._score_tokens

    def judge(
        self,
        prompts: Sequence[Sequence[int]],
        requests: Sequence[str | None] | None = None,
    ) -> list[JudgeOutput]:
        results: list[JudgeOutput | None] = [None] * len(prompts)
        for idx in self._micro_batches(prompts):
            batch = [prompts[i] for i in idx]
            try:
                outs = self._run(batch)
            except Exception as e:  # noqa: BLE001 - isolate the row that broke the batch
                outs = self._run_one_by_one(batch, e)
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
        return [r if r is not None else JudgeOutput(error="not scored") for r in results]

    def _micro_batches(self, prompts: Sequence[Sequence[int]]) -> Iterator[list[int]]:
        """Length-sorted so that each micro-batch pads to similar lengths."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        step = self.cfg.micro_batch_size
        for start in range(0, len(order), step):
            yield order[start : start + step]

    def _run_one_by_one(self, batch: list[Sequence[int]], err: Exception) -> list[JudgeOutput]:
        if len(batch) == 1:
            return [JudgeOutput(error=f"{type(err).__name__}: {err}")]
        outs = []
        for prompt in batch:
            try:
                outs.extend(self._run([prompt]))
            except Exception as e:  # noqa: BLE001
                outs.append(JudgeOutput(error=f"{type(e).__name__}: {e}"))
        return outs

    def _run(self, batch: list[Sequence[int]]) -> list[JudgeOutput]:
        ids, mask = self._left_pad(batch)
        with self.torch.inference_mode():
            if self.cfg.mode == "logprobs":
                return self._logprobs(ids, mask)
            return self._generate(ids, mask)

    def _left_pad(self, batch: list[Sequence[int]]) -> tuple[Any, Any]:
        torch = self.torch
        width = max(len(p) for p in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):
            if len(prompt):
                ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
                mask[row, width - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _logprobs(self, ids: Any, mask: Any) -> list[JudgeOutput]:
        # Explicit positions: with left padding, positions must start at each row's first token
        # or a padded row would score differently from the same prompt alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        try:
            logits = self.model(**kwargs, logits_to_keep=1).logits[:, -1, :]
        except TypeError:  # models without logits_to_keep
            logits = self.model(**kwargs).logits[:, -1, :]
        logprobs = logits.float().log_softmax(-1)[:, self._candidates].cpu().tolist()
        cand = self._candidates.tolist()
        return [
            JudgeOutput(logprobs=dict(zip(cand, row, strict=True)), num_output_tokens=1)
            for row in logprobs
        ]

    def _generate(self, ids: Any, mask: Any) -> list[JudgeOutput]:
        stop = self.cfg.stop()
        extra = {"stop_strings": stop, "tokenizer": self.tokenizer} if stop else {}
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.cfg.answer_tokens(),
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            **extra,
        )
        new = out[:, ids.shape[1] :]
        results = []
        eos = self.tokenizer.eos_token_id
        for row in new.tolist():
            n = next((i for i, t in enumerate(row) if t == eos), len(row))
            cut = self._stopped_at(row[:n], stop[0]) if stop else None
            if cut is not None:  # the stop string ends the text, as vLLM's leaves it out
                text = self.tokenizer.decode(row[:cut], skip_special_tokens=True)
                results.append(JudgeOutput(text=text.split(stop[0])[0], num_output_tokens=cut))
                continue
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            # Tokens generated, the end-of-sequence token included, as vLLM counts them.
            results.append(JudgeOutput(text=text, num_output_tokens=min(n + 1, len(row))))
        return results

    def _stopped_at(self, row: list[int], stop: str) -> int | None:
        """How many tokens it took to write `stop` (the rest of the row is padding), or None
        when it never came. Answers here are a few tokens, so decoding each prefix is cheap."""
        for i in range(1, len(row) + 1):
            if stop in self.tokenizer.decode(row[:i], skip_special_tokens=True):
                return i
        return None
