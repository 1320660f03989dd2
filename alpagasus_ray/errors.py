"""Errors raised where Ray runs the work and said by the CLI in one line; here, with no
dependency, so that the CLI can name them without loading Ray Data."""

from __future__ import annotations

from typing import Any


class UnreadableInputError(OSError):
    """An input file that cannot be opened or parsed, named by its path."""

    def __init__(self, path: str, cause: BaseException | str):
        self.path, self.cause_line = path, first_line(cause)
        super().__init__(f"input file ({path}): cannot read it: {self.cause_line}")

    def __reduce__(self) -> tuple[Any, ...]:  # raised in Ray workers, rebuilt in the driver
        return type(self), (self.path, self.cause_line)


def first_line(cause: BaseException | str) -> str:
    text = str(cause).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(cause, str) else f"{type(cause).__name__}: {first}"
