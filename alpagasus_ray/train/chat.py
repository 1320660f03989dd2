"""Conversation rows for fine-tuning: the model's own chat template renders the turns, and
the loss is on the assistant turns only (each answer, with the template's end-of-turn
marks, is a target; system and user turns and the template's headers are context).

The targets are found by rendering the conversation turn by turn: the text up to an answer
(with the template's generation prompt) and the text through it are each a prefix of the
whole rendering, so the answer is the characters between them, and its tokens are those the
fast tokenizer's offsets place there. TRL's `assistant_only_loss` needs the template to mark
answers with `{% generation %}`, which most models' templates (SmolLM2's, Llama's) do not.
"""

from __future__ import annotations

import json
from typing import Any

from alpagasus_ray.data.schema import TURNS, Reason
from alpagasus_ray.filter.conversations import conversation_fields
from alpagasus_ray.filter.preflight import PreflightError

IGNORE_INDEX = -100  # labels torch's cross-entropy skips: the prompt is context, not target
NO_RESPONSE_TOKENS = "no_response_tokens"  # a skip reason: truncation left no target
NOT_TURN_BY_TURN = "template_not_turn_by_turn"  # a skip reason (train/data.py)


class NoChatTemplate(PreflightError):
    """Conversation rows and a tokenizer that cannot render them: refused at start."""


def check_chat_tokenizer(tokenizer: Any, name: str) -> None:
    """The tokenizer can train conversation rows: a chat template, and character offsets."""
    where = "model.tokenizer"
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplate(
            "conversation rows",
            where,
            f"{name} has no chat template, so they cannot be rendered as the model will see "
            "them; use a chat model's tokenizer, or Alpaca rows",
        )
    if not getattr(tokenizer, "is_fast", False):
        raise NoChatTemplate(
            "conversation rows",
            where,
            f"{name} is not a fast tokenizer, whose character offsets find the assistant turns",
        )


def conversation_turns(value: Any) -> tuple[list[dict[str, str]], str | None]:
    """A stored conversation (a list of turns, or its JSON text as a filter output keeps it)
    as role/content turns through its last answer, or the reason it cannot be trained on."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [], Reason.MALFORMED_JSON.value
    fields, problem = conversation_fields(value)
    if problem:
        return [], problem[0].value
    return json.loads(fields[TURNS]), None


def _render(tokenizer: Any, turns: list[dict[str, str]], prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)


def answer_spans(tokenizer: Any, turns: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The whole rendering and the character span of each assistant turn that answers a
    turn before it; no spans when the template does not render turn by turn."""
    text = _render(tokenizer, turns)
    spans = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant" or i == 0:
            continue
        before = _render(tokenizer, turns[:i], prompt=True)
        through = _render(tokenizer, turns[: i + 1])
        if not (text.startswith(through) and through.startswith(before)):
            return text, []
        spans.append((len(before), len(through)))
    return text, spans


def encode_conversation(
    tokenizer: Any, turns: list[dict[str, str]], max_length: int
) -> tuple[list[int], list[int], str | None]:
    """(input_ids, labels, skip reason): labels are the ids of the assistant turns' tokens
    and IGNORE_INDEX elsewhere, truncated to `max_length`; empty lists with a reason when
    nothing is left to learn."""
    text, spans = answer_spans(tokenizer, turns)
    if not spans:
        return [], [], NOT_TURN_BY_TURN
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], []
    for token, (start, _) in zip(ids, enc["offset_mapping"], strict=True):
        target = any(a <= start < b for a, b in spans)
        labels.append(token if target else IGNORE_INDEX)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return [], [], NO_RESPONSE_TOKENS
    return ids, labels, None
