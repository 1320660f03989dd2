"""Prompt -> generate, for answers and judgements alike: the candidate models and the judge run
as `JudgeConfig`s in generate mode, so they get the same HF engine (or vLLM stage) as the
filter's judge."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Literal

import pyarrow as pa

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.evaluate.columns import (
    GEN_ERROR,
    GEN_REQUEST,
    GEN_TEXT,
    GEN_TOKENS,
    PROMPT_IDS,
    PROMPT_TOKENS,
)
from alpagasus_ray.evaluate.pairwise import pair_messages
from alpagasus_ray.text.models import load_tokenizer, model_max_len
from alpagasus_ray.text.prompts import alpaca_prompt, encode_prompts, render


@lru_cache(maxsize=8)
def _context_len(model: str, tokenizer: str, trust_remote_code: bool) -> int:
    return model_max_len(model, load_tokenizer(tokenizer, trust_remote_code), trust_remote_code)


def _max_len(cfg: JudgeConfig, tokenizer: str) -> int:
    model = tokenizer if cfg.engine == "openai" else cfg.model  # an API model is only a name
    return cfg.max_model_len or _context_len(model, tokenizer, cfg.trust_remote_code)


class PromptStage:
    """Builds and tokenizes prompts; rows that cannot fit the context get an error instead.

    kind="answer": the Alpaca template on the question. kind="judge": the pairwise prompt
    through the judge's chat template when it has one. An API engine also gets each row's
    request (`engines/api.py`); without a configured tokenizer its prompts are neither
    tokenized nor length-checked here (the server counts them and refuses what is too long).
    """

    def __init__(self, cfg: JudgeConfig, kind: Literal["answer", "judge"]):
        self.cfg, self.kind = cfg, kind

    def __call__(self, table: pa.Table) -> pa.Table:
        cfg = self.cfg
        name = cfg.tokenizer_name()
        tok = load_tokenizer(name, cfg.trust_remote_code) if name else None
        use_chat = cfg.chat_template == "auto" and bool(getattr(tok, "chat_template", None))
        rows = table.to_pylist()
        messages: list[list[dict[str, str]] | None] = []
        errors: list[str | None] = []
        for r in rows:
            if self.kind == "answer" and r["problem"]:
                messages.append(None)
                errors.append(f"test set row: {r['problem']}")
            elif self.kind == "answer":
                messages.append([{"role": "user", "content": self._question(r)}])
                errors.append(None)
            elif r["answer_1"] is None or r["answer_2"] is None:
                messages.append(None)
                errors.append("a model produced no answer for this question")
            else:
                messages.append(pair_messages(r["question"], r["answer_1"], r["answer_2"]))
                errors.append(None)
        texts = [self._text(m, tok, use_chat) if m else None for m in messages]
        todo = [i for i, t in enumerate(texts) if t is not None]
        ids: list[list[int] | None] = [None] * len(rows)
        if tok is not None:
            enc = encode_prompts(tok, [texts[i] for i in todo], use_chat)
            limit = _max_len(cfg, name) - cfg.max_new_tokens
            for i, e in zip(todo, enc, strict=True):
                if len(e) > limit:
                    errors[i] = f"prompt of {len(e)} tokens + {cfg.max_new_tokens} new > context"
                else:
                    ids[i] = e
        n_prompt = [len(x) if x is not None else None for x in ids]
        table = (
            table.append_column(PROMPT_IDS, pa.array(ids, type=pa.list_(pa.int64())))
            .append_column(PROMPT_TOKENS, pa.array(n_prompt, type=pa.int64()))
            .append_column(GEN_ERROR, pa.array(errors, type=pa.string()))
        )
        if cfg.engine == "openai":
            chat = cfg.api.endpoint == "chat"
            reqs = [
                json.dumps({"messages": m} if chat else {"prompt": t}) if e is None else None
                for m, t, e in zip(messages, texts, errors, strict=True)
            ]
            table = table.append_column(GEN_REQUEST, pa.array(reqs, type=pa.string()))
        return table

    def _question(self, row: dict[str, Any]) -> str:
        """What a candidate model is asked: the Alpaca prompt, or (its chat template) the
        instruction and its input as one user turn."""
        if self.cfg.chat_template == "never":
            return alpaca_prompt(row["instruction"], row["input"])
        return "\n\n".join(p for p in (row["instruction"], row["input"]) if p)

    def _text(self, messages: list[dict[str, str]], tok: Any, use_chat: bool) -> str:
        """The prompt as a local engine (or the completions endpoint) gets it: an answer in
        the Alpaca template is the bare prompt; any other prompt is chat-rendered."""
        if self.kind == "answer" and not use_chat:
            return messages[0]["content"]
        return render(messages, tok, use_chat)


class EngineGenerateStage:
    """One actor per replica (HF or API engine): the engine starts once, then generates
    greedily for each batch."""

    def __init__(self, cfg: JudgeConfig, api: Any = None):
        from alpagasus_ray.engines import make_engine

        self.engine = make_engine(cfg, api)

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = table.column(PROMPT_IDS).to_pylist()
        errors = table.column(GEN_ERROR).to_pylist()
        reqs = (
            table.column(GEN_REQUEST).to_pylist()
            if GEN_REQUEST in table.column_names
            else [None] * table.num_rows
        )
        todo = [i for i, e in enumerate(errors) if e is None]
        outs = self.engine.judge([ids[i] for i in todo], [reqs[i] for i in todo]) if todo else []
        text: list[str | None] = [None] * table.num_rows
        ntok: list[int | None] = [None] * table.num_rows
        nprompt = table.column(PROMPT_TOKENS).to_pylist()
        for i, o in zip(todo, outs, strict=True):
            text[i], ntok[i] = (None if o.error else o.text), o.num_output_tokens
            errors[i] = o.error
            if o.num_prompt_tokens is not None:
                nprompt[i] = o.num_prompt_tokens
        for name, values in ((GEN_ERROR, errors), (PROMPT_TOKENS, nprompt)):
            idx = table.schema.get_field_index(name)
            table = table.set_column(idx, name, pa.array(values, table.schema.field(idx).type))
        if GEN_REQUEST in table.column_names:
            table = table.drop_columns([GEN_REQUEST])
        return table.append_column(GEN_TEXT, pa.array(text, pa.string())).append_column(
            GEN_TOKENS, pa.array(ntok, pa.int64())
        )


def generate(
    ds: Any, cfg: JudgeConfig, kind: Literal["answer", "judge"], task_cpus: float
) -> tuple[Any, Any]:
    """prompt -> engine: adds _gen_text / _gen_tokens / _gen_error to every row. Also returns
    an API engine's budget and key (`JobAPI`, None for a local engine), for the cost check
    after the write."""
    ds = ds.map_batches(
        PromptStage(cfg, kind),
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        num_cpus=task_cpus,
    )
    if cfg.engine == "vllm":
        from alpagasus_ray.evaluate.generate_vllm import generate_with_vllm

        return generate_with_vllm(ds, cfg, task_cpus), None
    api = None
    if cfg.engine == "openai":  # one rate limit and cost cap for every replica
        from alpagasus_ray.engines.api_budget import job_api

        api = job_api(cfg)
    replicas = cfg.replicas if isinstance(cfg.replicas, int) else tuple(cfg.replicas)
    ds = ds.map_batches(
        EngineGenerateStage,
        fn_constructor_kwargs={"cfg": cfg, "api": api},
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        concurrency=replicas,
        num_gpus=cfg.num_gpus_per_replica or None,
        num_cpus=cfg.num_cpus_per_replica,
    )
    return ds, api
