"""Conversation rows (`input.columns.messages`): a list of turns, OpenAI's `role`/`content`
or ShareGPT's `from`/`value` (`human`, `gpt`, `system`), told apart by their keys, turn by
turn.

The row's triple is the last exchange: the user turn before the last assistant turn is the
instruction, the turns before that (a system turn among them) the input, shown as the
conversation so far, and the answer the response; the judge's prompt shows the turns
themselves (`text.prompts.conversation_messages`), so a one-turn conversation is judged
exactly as the Alpaca row it amounts to. A conversation that cannot be judged is
quarantined with its reason, never dropped."""

from __future__ import annotations

import json
from typing import Any

from alpagasus_ray.data.schema import INPUT, INSTRUCTION, OUTPUT, TURNS, Reason

ROLES = {"system": "system", "user": "user", "assistant": "assistant",
         "human": "user", "gpt": "assistant"}  # fmt: skip
SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}
_SPEAKERS = {"system": "System", "user": "User", "assistant": "Assistant"}
Problem = tuple[Reason, str]


def turns(value: Any) -> tuple[list[dict[str, str]], Problem | None]:
    """The conversation as `{"role", "content"}` turns (content as read), or the first
    problem: not a list, a turn that is not an object of either style, an unknown role, a
    content that is not a non-empty string."""
    if not isinstance(value, list):
        return [], (Reason.INVALID_TURN, f"a conversation is a list of turns, not a {_kind(value)}")
    found = []
    for i, turn in enumerate(value):
        if isinstance(turn, dict) and "role" in turn:
            role, content = turn.get("role"), turn.get("content")
        elif isinstance(turn, dict) and "from" in turn:
            role, content = turn.get("from"), turn.get("value")
        else:
            detail = f"turn {i} has neither role/content nor from/value"
            return [], (Reason.INVALID_TURN, detail)
        if role not in ROLES:
            known = ", ".join(sorted(ROLES))
            return [], (Reason.UNKNOWN_ROLE, f"turn {i} has role {role!r}; known: {known}")
        if not isinstance(content, str) or not content.strip():
            what = "empty" if isinstance(content, str) else f"a {_kind(content)}"
            return [], (Reason.INVALID_TURN, f"turn {i}'s content is {what}, not text")
        found.append({"role": ROLES[role], "content": content})
    return found, None


def conversation_fields(value: Any) -> tuple[dict[str, str | None], Problem | None]:
    """The triple the judge rates (instruction, input, response) of a conversation, or the
    reason it cannot be judged."""
    empty: dict[str, str | None] = {INSTRUCTION: None, INPUT: "", OUTPUT: None}
    found, problem = turns(value)
    if problem:
        return empty, problem
    answers = [i for i, t in enumerate(found) if t["role"] == "assistant"]
    if not answers:
        return empty, (Reason.NO_ASSISTANT_TURN, "the conversation has no assistant turn")
    last = answers[-1]
    if last == 0 or found[last - 1]["role"] != "user":
        return empty, (Reason.INVALID_TURN, f"the answer in turn {last} follows no user turn")
    context = "\n\n".join(f"{_SPEAKERS[t['role']]}: {t['content']}" for t in found[: last - 1])
    fields = {INSTRUCTION: found[last - 1]["content"], INPUT: context}
    fields[OUTPUT], fields[TURNS] = found[last]["content"], json.dumps(found[: last + 1])
    return fields, None


def judged_ends(conversation: list[dict[str, str]], each: bool) -> list[int]:
    """The index of each turn the judge rates: the last one (the conversation as validated
    ends with its last answer), or with `each` every assistant turn that answers a user
    turn, in order."""
    if not each:
        return [len(conversation) - 1]
    return [
        i
        for i, t in enumerate(conversation)
        if t["role"] == "assistant" and i > 0 and conversation[i - 1]["role"] == "user"
    ]


def as_sharegpt(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """`{"role", "content"}` turns as ShareGPT's `{"from", "value"}` turns."""
    return [{"from": SHAREGPT[t["role"]], "value": t["content"]} for t in conversation]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
