"""Build and tokenize each row's rating prompt; quarantine a row whose prompt cannot fit.

Runs on CPU actors ahead of the judge, so an over-long example is caught with the judge's
own tokenizer before it reaches any engine, and engines receive token ids ready to run. The
fixed head of the prompt is tokenized once per actor (`prompts.PromptEncoder`).
"""

from __future__ import annotations

import json

import pyarrow as pa

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.data.schema import (
    DECISION,
    INPUT,
    INSTRUCTION,
    NUM_PROMPT_TOKENS,
    OUTPUT,
    PROMPT_REQUEST,
    PROMPT_TOKEN_IDS,
    REASON,
    REASON_DETAIL,
    Decision,
    Reason,
)
from alpagasus_ray.filter.stages.common import column_or_nulls, pending_rows, with_columns
from alpagasus_ray.text.models import load_tokenizer, model_max_len
from alpagasus_ray.text.prompts import PromptEncoder, rating_messages, render


class PromptStage:
    def __init__(self, judge: JudgeConfig):
        self.cfg = judge
        name = judge.tokenizer_name()
        # An API judge without a configured tokenizer: prompts are neither counted nor
        # length-checked here; the server counts them (usage) and refuses what is too long.
        self.tokenizer = load_tokenizer(name, judge.trust_remote_code) if name else None
        self.use_template = judge.chat_template == "auto" and bool(
            getattr(self.tokenizer, "chat_template", None)
        )
        self.max_len = judge.max_model_len or (
            model_max_len(name, self.tokenizer, judge.trust_remote_code) if name else None
        )
        self.encoder = (
            PromptEncoder(self.tokenizer, judge.dimension, judge.layout, self.use_template)
            if self.tokenizer is not None
            else None
        )
        # Room the answer needs: one token to read log-probs from, or the whole generation.
        self.reserve = judge.answer_tokens()

    def __call__(self, table: pa.Table) -> pa.Table:
        todo = pending_rows(table)
        cols = {c: table.column(c).to_pylist() for c in (INSTRUCTION, INPUT, OUTPUT)}
        rows = [{c: cols[c][i] for c in cols} for i in todo]
        encoded = self.encoder(rows) if self.encoder else [None] * len(rows)

        n = table.num_rows
        token_ids: list[list[int] | None] = [None] * n
        num_tokens: list[int | None] = [None] * n
        decision = column_or_nulls(table, DECISION)
        reason = column_or_nulls(table, REASON)
        detail = column_or_nulls(table, REASON_DETAIL)
        limit = self.max_len - self.reserve if self.max_len else None
        for i, ids in zip(todo, encoded, strict=True):
            if ids is None:
                continue
            num_tokens[i] = len(ids)
            if limit is not None and len(ids) > limit:
                decision[i] = Decision.QUARANTINED.value
                reason[i] = Reason.PROMPT_TOO_LONG.value
                detail[i] = (
                    f"{len(ids)} prompt tokens + {self.reserve} answer tokens > "
                    f"max_model_len {self.max_len}"
                )
            else:
                token_ids[i] = ids
        new = {
            PROMPT_TOKEN_IDS: token_ids,
            NUM_PROMPT_TOKENS: num_tokens,
            DECISION: decision,
            REASON: reason,
            REASON_DETAIL: detail,
        }
        if not self.cfg.loads_model():
            new[PROMPT_REQUEST] = self._requests(n, todo, rows, decision)
        return with_columns(table, new)

    def _requests(
        self, n: int, todo: list[int], rows: list[dict], decision: list[str | None]
    ) -> list[str | None]:
        """Each pending row's request, for a judge that loads no model (an API, the hash
        stand-in): the chat messages, or for the completions endpoint the prompt text."""
        out: list[str | None] = [None] * n
        for i, row in zip(todo, rows, strict=True):
            if decision[i] is not None:
                continue
            msgs = rating_messages(
                row[INSTRUCTION], row[INPUT], row[OUTPUT], self.cfg.dimension, self.cfg.layout
            )
            if self.cfg.api.endpoint == "chat":
                out[i] = json.dumps({"messages": msgs})
            else:
                out[i] = json.dumps({"prompt": render(msgs, self.tokenizer, self.use_template)})
        return out
