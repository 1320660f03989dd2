"""Build and tokenize each row's rating prompt; quarantine a row whose prompt cannot fit.

Runs on CPU actors ahead of the judge, so an over-long example is caught with the judge's
own tokenizer before it reaches any engine, and engines receive token ids ready to run. The
fixed head of the prompt is tokenized once per actor (`prompts.PromptEncoder`). The HF
engine's replicas run it themselves, with the tokenizer they load anyway
(`JudgeConfig.prompts_in_replica`).
"""

from __future__ import annotations

import json
from typing import Any

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
    TURN_PROMPT_IDS,
    TURN_REQUESTS,
    TURNS,
    Decision,
    Reason,
)
from alpagasus_ray.filter.conversations import judged_ends
from alpagasus_ray.filter.stages.common import column_or_nulls, pending_rows, with_columns
from alpagasus_ray.text.models import load_tokenizer, model_max_len
from alpagasus_ray.text.prompts import (
    PromptEncoder,
    conversation_messages,
    encode_prompts,
    rating_messages,
    render,
)


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
        # One prompt a row, or with `judge.criteria` one per criterion (each its rubric).
        self.judges = list(judge.criterion_judges().values()) or [judge]
        self.encoders = [
            PromptEncoder(self.tokenizer, j.rubric, j.layout, self.use_template)
            for j in self.judges
            if self.tokenizer is not None
        ]
        # Room the answer needs: one token to read log-probs from, or the whole generation.
        self.reserve = judge.answer_tokens()

    def __call__(self, table: pa.Table) -> pa.Table:
        todo = pending_rows(table)
        conversations = column_or_nulls(table, TURNS)
        cols = {c: table.column(c).to_pylist() for c in (INSTRUCTION, INPUT, OUTPUT)}
        messages = {i: self._messages(conversations[i]) for i in todo}
        encoded = self._encode(todo, messages, cols)

        n = table.num_rows
        token_ids: list[list[int] | None] = [None] * n
        turn_ids: list[list[list[int]] | None] = [None] * n
        num_tokens: list[int | None] = [None] * n
        decision = column_or_nulls(table, DECISION)
        reason = column_or_nulls(table, REASON)
        detail = column_or_nulls(table, REASON_DETAIL)
        limit = self.max_len - self.reserve if self.max_len else None
        for i in todo:
            prompts = encoded[i]
            if prompts is None:
                continue
            longest = max(len(ids) for ids in prompts)
            num_tokens[i] = sum(len(ids) for ids in prompts)
            if limit is not None and longest > limit:
                decision[i] = Decision.QUARANTINED.value
                reason[i] = Reason.PROMPT_TOO_LONG.value
                detail[i] = (
                    f"{longest} prompt tokens + {self.reserve} answer tokens > "
                    f"max_model_len {self.max_len}"
                )
            elif self._several(conversations[i]):
                turn_ids[i] = prompts
            else:
                token_ids[i] = prompts[0]
        new = {
            PROMPT_TOKEN_IDS: token_ids,
            TURN_PROMPT_IDS: turn_ids,
            NUM_PROMPT_TOKENS: num_tokens,
            DECISION: decision,
            REASON: reason,
            REASON_DETAIL: detail,
        }
        if not self.cfg.loads_model():
            new.update(self._requests(n, messages, cols, decision, conversations))
        return with_columns(table, new)

    def _several(self, conversation: str | None) -> bool:
        """Whether a row has several prompts: one per criterion, or one per judged turn of
        a conversation (`judge.turns: each`)."""
        each_turn = self.cfg.turns == "each" and conversation is not None
        return bool(self.cfg.criteria) or each_turn

    def _messages(self, conversation: str | None) -> list[list[dict[str, str]]] | None:
        """A conversation row's chat messages, one per judged turn (`judge.turns`) or per
        criterion; None for a triple, which takes the encoders' cached heads."""
        if conversation is None:
            return None
        found = json.loads(conversation)
        ends = judged_ends(found, each=self.cfg.turns == "each")
        return [
            conversation_messages(found[: end + 1], j.rubric, j.layout)
            for j in self.judges
            for end in ends
        ]

    def _encode(
        self, todo: list[int], messages: dict[int, Any], cols: dict[str, list]
    ) -> dict[int, list[list[int]] | None]:
        """Each pending row's prompts as token ids (None without a tokenizer): triples
        through the encoder's cached head, conversations rendered and tokenized whole."""
        if not self.encoders:
            return dict.fromkeys(todo)
        triples = [i for i in todo if messages[i] is None]
        rows = [{c: cols[c][i] for c in cols} for i in triples]
        each = [encoder(rows) for encoder in self.encoders]
        out: dict[int, list[list[int]] | None] = {
            i: [ids[k] for ids in each] for k, i in enumerate(triples)
        }
        for i in todo:
            if messages[i] is not None:
                texts = [render(m, self.tokenizer, self.use_template) for m in messages[i]]
                out[i] = [list(x) for x in encode_prompts(self.tokenizer, texts, self.use_template)]
        return out

    def _requests(
        self,
        n: int,
        messages: dict[int, Any],
        cols: dict[str, list],
        decision: list[str | None],
        conversations: list[str | None],
    ) -> dict[str, list]:
        """Each pending row's request, for a judge that loads no model (an API, the hash
        stand-in): the chat messages, or for the completions endpoint the prompt text; a
        conversation's, one per judged turn, in `TURN_REQUESTS` under `turns: each`."""
        single: list[str | None] = [None] * n
        turns: list[list[str] | None] = [None] * n
        for i, msgs in messages.items():
            if decision[i] is not None:
                continue
            if msgs is None:
                triple = [cols[c][i] for c in (INSTRUCTION, INPUT, OUTPUT)]
                msgs = [rating_messages(*triple, j.rubric, j.layout) for j in self.judges]
            requests = [self._request(m) for m in msgs]
            if self._several(conversations[i]):
                turns[i] = requests
            else:
                single[i] = requests[0]
        return {PROMPT_REQUEST: single, TURN_REQUESTS: turns}

    def _request(self, messages: list[dict[str, str]]) -> str:
        if self.cfg.api.endpoint == "chat":
            return json.dumps({"messages": messages})
        return json.dumps({"prompt": render(messages, self.tokenizer, self.use_template)})
