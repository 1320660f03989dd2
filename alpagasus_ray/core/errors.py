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


class ExportRefused(ValueError):
    """An export that cannot be done as asked, said in one line (the CLI exits 2)."""


class CalibrationRefused(ValueError):
    """A label file or a match that `alpagasus-ray calibrate` cannot use."""


class InvariantError(RuntimeError):
    """Rows were lost or duplicated between input and output: the output is committed as
    `inconsistent`, and the command fails."""


class JudgeAPIStopped(RuntimeError):
    """An API judge that stopped the job on purpose: the breaker (most recent requests
    failed) or the cost cap. Said as one line naming the key to look at."""

    def __init__(self, key: str, cause: str):
        self.key, self.cause_line = key, cause
        who = "judge" if key.startswith("judge.") else "model"  # or an evaluation's answers
        super().__init__(f"{who} API stopped the job ({key}): {cause}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.key, self.cause_line)


def missing_file_line(error: FileNotFoundError) -> str:
    """A missing file said with what is wrong: pyarrow and fsspec raise one whose whole
    message is the bare path. A file in a filter output's `data/decision=` folders is one
    its committed manifest lists (readers read no other), so it was removed by hand."""
    text = str(error)
    if not text or any(ch.isspace() for ch in text) or "/" not in text:
        return text  # a message of its own: ours name the key, file or output already
    line = f"{text}: no such file"
    if "/data/decision=" in text:
        line += (
            "; the output's manifest.json lists it, so it was removed or moved by hand: "
            "put it back, or run the filter again with output.overwrite=true"
        )
    return line


def first_line(cause: BaseException | str) -> str:
    text = str(cause).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(cause, str) else f"{type(cause).__name__}: {first}"


class StorageNotShared(OSError):
    """A local input or output that a node of the cluster cannot see: the rows it reads or
    writes there would be on one node's disk, and go with the node."""

    def __init__(self, key: str, path: str, node: str):
        self.key, self.path, self.node = key, path, node
        what = key.split(".")[0]
        super().__init__(
            f"{what} ({key}): node {node} does not see {path}: on a cluster, a local path "
            f"must be on a disk every node shares (NFS or another shared mount); use one, "
            f"or s3://"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.key, self.path, self.node)
