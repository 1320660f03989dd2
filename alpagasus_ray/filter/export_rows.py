"""One exported row in a text format: Alpaca's triple, chat `messages`, or ShareGPT's
`conversations`. A conversation row (`input.columns.messages`) is written as it was read,
its turns' content byte for byte; a flat row becomes one exchange."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from alpagasus_ray.core.errors import ExportRefused
from alpagasus_ray.data.schema import INPUT, INSTRUCTION, OUTPUT, SOURCE, TRIPLE
from alpagasus_ray.filter.conversations import as_sharegpt, turns

TEXT_FORMATS = ("alpaca", "messages", "sharegpt")


@dataclass
class RowShaper:
    """Shapes a stored row (a dict) as an exported record of `fmt`, with the carried
    columns `extras` beside it (those in `json_text` decoded back from JSON text), and
    `system` as a first system turn; `conversation` names a conversation row's column."""

    fmt: str
    extras: list[str]
    json_text: frozenset[str]
    system: str | None = None
    conversation: str | None = None

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        extra = {n: self._value(row, n) for n in self.extras if n != self.conversation}
        chat = self._turns(row)
        if self.fmt == "alpaca":
            return {**self._triple(row, chat), **extra}
        chat = ([{"role": "system", "content": self.system}] if self.system else []) + chat
        if self.fmt == "sharegpt":
            return {"conversations": as_sharegpt(chat), **extra}
        return {"messages": chat, **extra}

    def _value(self, row: dict[str, Any], name: str) -> Any:
        return decoded(row[name]) if name in self.json_text else row[name]

    def _turns(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """A conversation row's turns as read; else user (the instruction, then the input
        after a blank line) and assistant (the output). A quarantined row's missing text
        stays empty or null."""
        if self.conversation:
            found, problem = turns(self._value(row, self.conversation))
            if problem is None:
                return found
        user = (row[INSTRUCTION] or "") + ("\n\n" + row[INPUT] if row[INPUT] else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": row[OUTPUT]}]

    def _triple(self, row: dict[str, Any], chat: list[dict[str, Any]]) -> dict[str, Any]:
        """Alpaca's keys in its order; a conversation only when it is one exchange."""
        if self.conversation and [t["role"] for t in chat] != ["user", "assistant"]:
            raise ExportRefused(
                f"export: a row from {row[SOURCE]} is a conversation of {len(chat)} turns, "
                "more than Alpaca's one exchange: export it with --format messages or sharegpt"
            )
        return {c: row[c] for c in TRIPLE}


def decoded(value: Any) -> Any:
    """A value stored as JSON text, back as the value it was (a string that is not JSON
    text stays as it is)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value
