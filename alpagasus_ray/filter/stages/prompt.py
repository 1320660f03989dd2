"""Build and tokenize each row's rating prompt; quarantine a row whose prompt cannot fit.

Runs on CPU actors ahead of the judge, so an over-long example is caught with the judge's
own tokenizer before it reaches any engine, and engines receive token ids ready to run. The
fixed head of the prompt is tokenized once per actor (`prompts.PromptEncoder`).
"""

from __future__ import annotations

import pyarrow as pa

from alpagasus_ray.config import JudgeConfig
from alpagasus_ray.filter.stages.common import column_or_nulls, pending_rows, with_columns
from alpagasus_ray.models import load_tokenizer, model_max_len
from alpagasus_ray.prompts import PromptEncoder
from alpagasus_ray.schema import (
    DECISION,
    INPUT,
    INSTRUCTION,
    NUM_PROMPT_TOKENS,
    OUTPUT,
    PROMPT_TOKEN_IDS,
    REASON,
    REASON_DETAIL,
    Decision,
    Reason,
)


class PromptStage:
    def __init__(self, judge: JudgeConfig):
        self.cfg = judge
        name = judge.tokenizer or judge.model
        self.tokenizer = load_tokenizer(name, judge.trust_remote_code)
        self.use_template = judge.chat_template == "auto" and bool(self.tokenizer.chat_template)
        self.max_len = judge.max_model_len or model_max_len(
            judge.model, self.tokenizer, judge.trust_remote_code
        )
        self.encoder = PromptEncoder(
            self.tokenizer, judge.dimension, judge.layout, self.use_template
        )
        # Room the answer needs: one token to read log-probs from, or the whole generation.
        self.reserve = 1 if judge.mode == "logprobs" else judge.max_new_tokens

    def __call__(self, table: pa.Table) -> pa.Table:
        todo = pending_rows(table)
        cols = {c: table.column(c).to_pylist() for c in (INSTRUCTION, INPUT, OUTPUT)}
        rows = [{c: cols[c][i] for c in cols} for i in todo]
        encoded = self.encoder(rows)

        n = table.num_rows
        token_ids: list[list[int] | None] = [None] * n
        num_tokens: list[int | None] = [None] * n
        decision = column_or_nulls(table, DECISION)
        reason = column_or_nulls(table, REASON)
        detail = column_or_nulls(table, REASON_DETAIL)
        limit = self.max_len - self.reserve
        for i, ids in zip(todo, encoded, strict=True):
            num_tokens[i] = len(ids)
            if len(ids) > limit:
                decision[i] = Decision.QUARANTINED.value
                reason[i] = Reason.PROMPT_TOO_LONG.value
                detail[i] = (
                    f"{len(ids)} prompt tokens + {self.reserve} answer tokens > "
                    f"max_model_len {self.max_len}"
                )
            else:
                token_ids[i] = ids
        return with_columns(
            table,
            {
                PROMPT_TOKEN_IDS: token_ids,
                NUM_PROMPT_TOKENS: num_tokens,
                DECISION: decision,
                REASON: reason,
                REASON_DETAIL: detail,
            },
        )
