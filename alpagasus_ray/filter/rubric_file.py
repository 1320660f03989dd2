"""`judge.rubric_file`: a user's rubric template, read once at start into `judge.rubric`.

Read by the driver, not by each prompt actor: every worker, the run's fingerprint and its
manifest then see the one text that was judged with, not a path whose file may change.
"""

from __future__ import annotations

from alpagasus_ray.core.config import JudgeConfig, StorageConfig
from alpagasus_ray.data.io import filesystem
from alpagasus_ray.filter.preflight import PreflightError, storage_cause
from alpagasus_ray.text.rubrics import check_rubric, is_paper, rubric_label

MAX_RUBRIC_BYTES = 1 << 20  # a prompt's template, not a corpus
_DEFAULT = JudgeConfig.model_fields["rubric"].default


def with_rubric_file(judge: JudgeConfig, storage: StorageConfig) -> JudgeConfig:
    """`judge` whose `rubric` is its rubric file's text, and each criterion's the same
    (itself without a file, or when read already). Raises `PreflightError` naming the file:
    unreadable, not UTF-8, too large, not a usable template, or beside another template in
    `rubric`."""
    if judge.criteria:
        criteria = {
            name: c.model_copy(update={"rubric": _rubric_text(c.rubric_file, storage, name)})
            if c.rubric_file is not None and c.rubric is None
            else c
            for name, c in judge.criteria.items()
        }
        return judge.model_copy(update={"criteria": criteria})
    uri = judge.rubric_file
    if uri is None:
        return judge
    text = _rubric_text(uri, storage)
    if judge.rubric == text:
        return judge
    if judge.rubric != _DEFAULT:
        cause = f"judge.rubric is set too ({rubric_label(judge.rubric)}): give one of the two"
        raise PreflightError("judge rubric", "judge.rubric_file", cause)
    resolved = judge.model_copy(deep=True)
    resolved.rubric = text
    return resolved


def unread(judge: JudgeConfig) -> bool:
    """Whether a rubric file of `judge` (or of one of its criteria) is still to be read."""
    if judge.criteria:
        return any(c.rubric is None for c in judge.criteria.values())
    return judge.rubric_file is not None and is_paper(judge.rubric)


def _rubric_text(uri: str, storage: StorageConfig, criterion: str | None = None) -> str:
    key = f"judge.criteria.{criterion}.rubric_file" if criterion else "judge.rubric_file"
    text = _read_text(uri, storage, key)
    try:
        return check_rubric(text)
    except ValueError as e:
        raise PreflightError("judge rubric", uri, str(e)) from None


def _read_text(uri: str, storage: StorageConfig, key: str) -> str:
    try:
        fs, path = filesystem(uri, storage)
        with fs.open(path, "rb") as f:
            data = f.read(MAX_RUBRIC_BYTES + 1)
    except FileNotFoundError:
        raise PreflightError("judge rubric", key, f"no such file {uri}") from None
    except IsADirectoryError:
        raise PreflightError("judge rubric", uri, "is a folder, not a file") from None
    except OSError as e:
        raise PreflightError("judge rubric", uri, storage_cause(e)) from None
    if len(data) > MAX_RUBRIC_BYTES:
        cause = f"is over {MAX_RUBRIC_BYTES} bytes: a rubric is a prompt's template"
        raise PreflightError("judge rubric", uri, cause)
    try:
        return data.decode("utf-8-sig")  # a BOM from a Windows editor is not the rubric's
    except UnicodeDecodeError as e:
        cause = f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
        raise PreflightError("judge rubric", uri, cause) from None
