"""Prompt -> generate, for answers and judgements alike: the candidate models and the judge run
as `JudgeConfig`s in generate mode, so they get the same HF engine (or vLLM stage) as the
filter's judge."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import pyarrow as pa

from alpagasus_ray.config import JudgeConfig
from alpagasus_ray.evaluate.columns import (
    GEN_ERROR,
    GEN_TEXT,
    GEN_TOKENS,
    PROMPT_IDS,
    PROMPT_TOKENS,
)
from alpagasus_ray.evaluate.pairwise import pair_messages
from alpagasus_ray.models import load_tokenizer, model_max_len
from alpagasus_ray.prompts import alpaca_prompt, encode_prompts, render


@lru_cache(maxsize=8)
def _context_len(model: str, tokenizer: str, trust_remote_code: bool) -> int:
    return model_max_len(model, load_tokenizer(tokenizer, trust_remote_code), trust_remote_code)


def _max_len(cfg: JudgeConfig) -> int:
    tok = cfg.tokenizer or cfg.model
    return cfg.max_model_len or _context_len(cfg.model, tok, cfg.trust_remote_code)


class PromptStage:
    """Builds and tokenizes prompts; rows that cannot fit the context get an error instead.

    kind="answer": the Alpaca template on the question. kind="judge": the pairwise prompt
    through the judge's chat template when it has one.
    """

    def __init__(self, cfg: JudgeConfig, kind: Literal["answer", "judge"]):
        self.cfg, self.kind = cfg, kind

    def __call__(self, table: pa.Table) -> pa.Table:
        cfg = self.cfg
        tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
        use_chat = cfg.chat_template == "auto" and bool(getattr(tok, "chat_template", None))
        rows = table.to_pylist()
        texts: list[str | None] = []
        errors: list[str | None] = []
        for r in rows:
            if self.kind == "answer" and r["problem"]:
                texts.append(None)
                errors.append(f"test set row: {r['problem']}")
            elif self.kind == "answer":
                texts.append(alpaca_prompt(r["instruction"], r["input"]))
                errors.append(None)
            elif r["answer_1"] is None or r["answer_2"] is None:
                texts.append(None)
                errors.append("a model produced no answer for this question")
            else:
                msgs = pair_messages(r["question"], r["answer_1"], r["answer_2"])
                texts.append(render(msgs, tok, use_chat))
                errors.append(None)
        todo = [i for i, t in enumerate(texts) if t is not None]
        enc = encode_prompts(tok, [texts[i] for i in todo], use_chat)
        ids: list[list[int] | None] = [None] * len(rows)
        limit = _max_len(cfg) - cfg.max_new_tokens
        for i, e in zip(todo, enc, strict=True):
            if len(e) > limit:
                errors[i] = f"prompt of {len(e)} tokens + {cfg.max_new_tokens} new > context"
            else:
                ids[i] = e
        n_prompt = [len(x) if x is not None else None for x in ids]
        return (
            table.append_column(PROMPT_IDS, pa.array(ids, type=pa.list_(pa.int64())))
            .append_column(PROMPT_TOKENS, pa.array(n_prompt, type=pa.int64()))
            .append_column(GEN_ERROR, pa.array(errors, type=pa.string()))
        )


class HFGenerateStage:
    """One actor per replica: the model loads once, then generates greedily for each batch."""

    def __init__(self, cfg: JudgeConfig):
        from alpagasus_ray.engines import make_engine

        self.engine = make_engine(cfg)

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = table.column(PROMPT_IDS).to_pylist()
        todo = [i for i, x in enumerate(ids) if x is not None]
        outs = self.engine.judge([ids[i] for i in todo]) if todo else []
        text: list[str | None] = [None] * table.num_rows
        ntok: list[int | None] = [None] * table.num_rows
        errors = table.column(GEN_ERROR).to_pylist()
        for i, o in zip(todo, outs, strict=True):
            text[i], ntok[i] = (None if o.error else o.text), o.num_output_tokens
            errors[i] = o.error
        table = table.set_column(
            table.schema.get_field_index(GEN_ERROR), GEN_ERROR, pa.array(errors, pa.string())
        )
        return table.append_column(GEN_TEXT, pa.array(text, pa.string())).append_column(
            GEN_TOKENS, pa.array(ntok, pa.int64())
        )


def generate(ds: Any, cfg: JudgeConfig, kind: Literal["answer", "judge"], task_cpus: float) -> Any:
    """prompt -> engine: adds _gen_text / _gen_tokens / _gen_error to every row."""
    ds = ds.map_batches(
        PromptStage(cfg, kind),
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        num_cpus=task_cpus,
    )
    if cfg.engine == "vllm":
        from alpagasus_ray.evaluate.generate_vllm import generate_with_vllm

        return generate_with_vllm(ds, cfg, task_cpus)
    replicas = cfg.replicas if isinstance(cfg.replicas, int) else tuple(cfg.replicas)
    return ds.map_batches(
        HFGenerateStage,
        fn_constructor_kwargs={"cfg": cfg},
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        concurrency=replicas,
        num_gpus=cfg.num_gpus_per_replica or None,
        num_cpus=cfg.num_cpus_per_replica,
    )
