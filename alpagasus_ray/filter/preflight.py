"""Checks a filter job's inputs before Ray starts or the output is touched.

A mistake should cost seconds, not a cluster's scale-up: the input is listed, the first
file's columns are read (its schema, or a sample of JSON records) and matched against the
column mapping, and the judge model is found and its tokenizer loaded. Each failure is a
`PreflightError`, which the CLI prints as one line: `<what> (<key or file>): <cause>`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from alpagasus_ray.core.config import ColumnMap, JudgeConfig
from alpagasus_ray.core.errors import first_line
from alpagasus_ray.data.formats import FileFormat
from alpagasus_ray.data.io import is_local
from alpagasus_ray.data.listing import Listing, list_input_files
from alpagasus_ray.data.records import csv_header, open_text
from alpagasus_ray.filter.config import FilterJobConfig

JSON_SAMPLE_CHARS = 1 << 20  # read at most this much of the first JSON file
JSON_SAMPLE_RECORDS = 100
SKIP_PROBE_FILES = 10  # with on_unreadable_file=skip: files tried for a schema
FOOTER_THREADS = 8  # Parquet footers read at once (`conflicting_columns`)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What a folder's tokenizer is saved as (fast, sentencepiece, BPE vocab, GGUF, ...).
_TOKENIZER_FILE = re.compile(r"tokenizer.*|vocab\..*|merges\.txt|.*\.model|.*\.gguf")


class PreflightError(ValueError):
    """A job that cannot run as configured, said in one line."""

    def __init__(self, what: str, where: str, cause: str):
        super().__init__(f"{what} ({where}): {cause}")


def preflight(cfg: FilterJobConfig, dry_run: bool = False) -> Listing:
    """Raise `PreflightError` for the first problem found; when the job can start, return
    the input's listing (filesystem, files and their formats), which the job then reads. A dry run
    (`estimate.py`) neither asks an API judge's server nor looks at the output."""
    try:
        listing = list_input_files(cfg.input, cfg.storage)
    except (FileNotFoundError, ValueError) as e:
        raise PreflightError("input", "input.uri", str(e)) from None
    except OSError as e:  # credentials, permissions, an unreachable endpoint
        raise PreflightError("input", cfg.input.uri, storage_cause(e)) from None
    if not dry_run:
        check_output_apart(cfg, listing.fs, listing.files)
    path, columns = _first_readable(listing, cfg.input.on_unreadable_file == "skip")
    check_mapping(cfg.input.columns, columns, path)
    check_judge(cfg.judge, ask_server=not dry_run)
    if not dry_run:
        check_output(cfg)
    return listing


def _check_reusable(fs: Any, root: str, uri: str) -> None:
    """A non-empty output without `overwrite` is refused, unless a filter run wrote it
    (`run.json`): `filter/resume.py` then resumes it or re-decides it, or says why not."""
    from alpagasus_ray.data.io import RUN_MARKER, join

    if not fs.exists(join(root, RUN_MARKER)):
        cause = f"{uri} is not empty; set output.overwrite=true to replace it"
        raise PreflightError("output", "output.uri", cause)


def storage_cause(error: BaseException) -> str:
    """The storage server's own error code and message when there is one (s3fs turns
    `InvalidAccessKeyId` into a bare `PermissionError: Forbidden`), else the error itself."""
    seen = error
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error"):
            err = response["Error"]
            return f"{err.get('Code', '?')}: {err.get('Message', '')}".rstrip(": ")
        seen = seen.__cause__ or seen.__context__
    return f"{type(error).__name__}: {error}"


def check_output(cfg: FilterJobConfig) -> None:
    """The output can be written (S3: the bucket answers to these credentials; local: the
    nearest existing folder is a writable folder), and is empty unless an unfinished run to
    resume, or `output.overwrite` over an output this tool wrote (its marker)."""
    from alpagasus_ray.data.heartbeat import check_not_in_use
    from alpagasus_ray.data.io import (
        filesystem,
        foreign_output_cause,
        is_marked_output,
        output_entries,
    )

    uri = cfg.output.uri
    try:
        fs, root = filesystem(uri, cfg.storage)
        if fs.exists(root) and not fs.isdir(root):
            raise PreflightError("output", "output.uri", f"{uri} is a file, not a folder")
        check_not_in_use(fs, root, uri)  # a live run's output is never touched, nor advised on
        taken = bool(output_entries(fs, root))
        if taken and not cfg.output.overwrite:
            _check_reusable(fs, root, uri)
        elif taken and not is_marked_output(fs, root):  # overwrite replaces only our own
            raise PreflightError("output", "output.uri", foreign_output_cause(uri))
        if uri.startswith(("s3://", "s3a://")):
            fs.ls(root.split("/")[0])  # one cheap call: bucket and credentials
            return
    except OSError as e:
        raise PreflightError("output", uri, storage_cause(e)) from None
    parent = os.path.abspath(os.path.expanduser(root))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        what = "not a folder" if not os.path.isdir(parent) else "not writable"
        raise PreflightError("output", "output.uri", f"cannot create {uri}: {parent} is {what}")


def check_output_apart(cfg: FilterJobConfig, in_fs: Any, files: list[str]) -> None:
    """The output neither is nor holds the input (`files` too), nor lies in an input folder
    or where an input glob reaches: `overwrite` would delete the input before it is read, a
    rerun would read the output as input. Compared as resolved absolute paths on disk, as
    bucket/key prefixes on S3."""
    from alpagasus_ray.data.io import filesystem

    out_fs, root = filesystem(cfg.output.uri, cfg.storage)
    _, path = filesystem(cfg.input.uri, cfg.storage)
    if type(out_fs) is not type(in_fs):
        return  # local and S3, or two kinds of store: apart
    out, uri = _resolved(out_fs, root), cfg.input.uri
    glob = any(ch in path for ch in "*?[")
    unglobbed = _glob_base(path) if glob else path
    base = _resolved(in_fs, unglobbed)
    if _within(base, out):
        _apart_error(cfg, f"{'is' if base == out and not glob else 'holds'} the input {uri}")
    folders: dict[str, str] = {}  # each listed file's folder, once (a million shards: a few)
    for file in files:
        folders.setdefault(os.path.dirname(file), file)
    for folder, file in folders.items():
        if _within(_resolved(in_fs, folder), out):
            _apart_error(cfg, f"holds the input {_shown(in_fs, file)}")
    if glob and _within(out, base) and _glob_reaches(base + path[len(unglobbed) :], out):
        _apart_error(cfg, f"lies where the input glob {uri} reaches")
    if not glob and in_fs.isdir(path) and _within(out, base):
        _apart_error(cfg, f"lies inside the input folder {uri}")


def _apart_error(cfg: FilterJobConfig, what: str) -> None:
    cause = f"{cfg.output.uri} {what}; choose an output.uri outside the input"
    raise PreflightError("output", "output.uri", cause)


def _resolved(fs: Any, path: str) -> str:
    """A local path absolute with its links resolved; a store's bucket/key as it is."""
    if is_local(fs):
        return os.path.realpath(os.path.expanduser(path))
    return path.rstrip("/")


def _shown(fs: Any, path: str) -> str:
    """A path as the user writes it: local as it is, else with its scheme (s3://...)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def _glob_base(pattern: str) -> str:
    """The folder a glob searches: its path up to the first part with a wildcard."""
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    return "/".join(parts[:first]) or "/"


def _glob_reaches(pattern: str, out: str) -> bool:
    """Whether the input glob would match files a run writes into `out`."""
    from fsspec.utils import glob_translate

    from alpagasus_ray.data.io import DATA_DIR, MANIFEST, READ_LOG_DIR, RUN_MARKER

    data = f"{DATA_DIR}/decision=kept/0.parquet"
    written = (MANIFEST, RUN_MARKER, f"{READ_LOG_DIR}/0.json", data)
    regex = re.compile(glob_translate(pattern))
    return any(regex.match(f"{out}/{name}") for name in written)


def _first_readable(listing: Listing, skip: bool) -> tuple[str, set[str]]:
    """The first file's columns; when unreadable files are to be skipped, the first readable
    file's among the first few."""
    fs, files, formats, _ = listing
    candidates = files[: SKIP_PROBE_FILES if skip else 1]
    for path in candidates[:-1]:
        try:
            return path, first_file_columns(fs, path, formats[path])
        except PreflightError:
            continue
    return candidates[-1], first_file_columns(fs, candidates[-1], formats[candidates[-1]])


def first_file_columns(fs: Any, path: str, fmt: FileFormat) -> set[str]:
    """The column names of a columnar file's schema, a CSV or TSV file's header, or the keys
    of the first JSON records (read as the job reads them: decompressed and decoded)."""
    try:
        if fmt.columnar:
            from alpagasus_ray.data import columnar

            with fs.open(path, "rb") as f:
                return set(columnar.schema(f, fmt).names)
        with open_text(fs, path, fmt) as text:
            if fmt.kind in ("csv", "tsv"):
                return set(csv_header(text, "\t" if fmt.kind == "tsv" else ","))
            head = text.read(JSON_SAMPLE_CHARS + 1)
    except Exception as e:  # noqa: BLE001 - a corrupt or unreadable file, said with its path
        raise PreflightError("input file", path, f"cannot read it: {first_line(e)}") from None
    if len(head) <= JSON_SAMPLE_CHARS:
        _check_whole_array(head, path)
    return set().union(*(r.keys() for r in _sample_records(head))) if head.strip() else set()


def _check_whole_array(text: str, path: str) -> None:
    """A JSON array file read whole that does not parse (cut short, say) is refused with the
    parser's own line, as its read would fail (`sources._array_records`); a larger one
    fails or is skipped when it is read. JSON lines are left to validation, line by line."""
    if not text.lstrip().startswith("["):
        return
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise PreflightError("input file", path, f"cannot read it: {first_line(e)}") from None


def _sample_records(head: str) -> list[dict[str, Any]]:
    """The first JSON objects of a file's head, as an array document or as JSON lines;
    broken lines are skipped here (validation quarantines them)."""
    text = head.lstrip()
    records: list[Any] = []
    if text.startswith("["):
        decoder, pos = json.JSONDecoder(), 1
        while len(records) < JSON_SAMPLE_RECORDS:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            try:
                record, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break  # the end of the sample, or a broken record
            records.append(record)
    else:
        for line in text.splitlines()[:JSON_SAMPLE_RECORDS]:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [r for r in records if isinstance(r, dict)]


def conflicting_columns(listing: Listing) -> list[str]:
    """The columns of columnar files whose types differ across the input's files beyond
    what Arrow promotes (`pa.unify_schemas(..., promote_options="permissive")`; int64 in one
    file, string in another). Their blocks could not be joined or written as one column,
    whichever rows share a block, so validation carries them as JSON text. Read from the
    footers and headers alone, before anything is judged; one that cannot be read is left
    to that file's read, which fails or skips it."""
    fs, files, formats, _ = listing
    if len(files) < 2 or not all(f.columnar for f in formats.values()):
        return []
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from alpagasus_ray.data import columnar

    def footer(path: str) -> Any:
        try:
            with fs.open(path, "rb") as f:
                return columnar.schema(f, formats[path])
        except Exception:  # noqa: BLE001 - the read of that file says why
            return None

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        schemas = [s for s in pool.map(footer, files) if s is not None]
    try:
        pa.unify_schemas(schemas, promote_options="permissive")
        return []  # the usual case: one check for all files
    except pa.ArrowException:
        pass
    types: dict[str, list[Any]] = {}
    for schema in schemas:
        for field in schema:
            seen = types.setdefault(field.name, [])
            if field.type not in seen:
                seen.append(field.type)
    conflicting = []
    for name, kinds in types.items():
        try:
            pa.unify_schemas([pa.schema([(name, t)]) for t in kinds], promote_options="permissive")
        except pa.ArrowException:
            conflicting.append(name)
    return sorted(conflicting)


def check_mapping(mapping: ColumnMap, columns: set[str], path: str) -> None:
    """A mapped column that matches nothing is a mistake (a typo, the wrong data set); a
    column left at its default and absent, like Alpaca's optional `input`, is allowed."""
    if not columns:
        return  # an empty first file: nothing to compare against
    defaults = ColumnMap()
    read = ("messages",) if mapping.messages else ("instruction", "input", "output")
    for field in (*read, "id"):
        name = getattr(mapping, field)
        if name is None or name in columns:
            continue
        if field == "input" and name == defaults.input:
            continue
        raise PreflightError(
            "column mapping",
            f"input.columns.{field}={name}",
            f"no column {name!r} in {path}; its columns are: {', '.join(sorted(columns))}",
        )


def check_api(judge: JudgeConfig, section: str = "judge", model_key: str | None = None) -> None:
    """An API judge: the key is set, and one cheap call (the server's model list) shows that
    the URL answers, takes the key and serves `model`, before any row is read."""
    try:
        import openai
    except ImportError:
        cause = "the API engine needs the OpenAI SDK: pip install 'alpagasus-ray[api]'"
        raise PreflightError("judge API", f"{section}.engine", cause) from None

    from alpagasus_ray.engines.api import api_key, redact

    api, env = judge.api, judge.api.api_key_env
    if env and not os.environ.get(env):
        cause = f"${env} is not set (a server without keys takes any value, or set it to null)"
        raise PreflightError("judge API key", f"{section}.api.api_key_env", cause)
    key = api_key(judge)
    client = openai.OpenAI(base_url=api.base_url, api_key=key or "EMPTY", max_retries=1, timeout=15)
    try:
        served = [m.id for m in client.models.list()]
    except openai.AuthenticationError as e:
        cause = redact(f"the server refused the key in ${env}: HTTP {e.status_code}: {e}", key)
        raise PreflightError("judge API key", f"{section}.api.api_key_env", cause) from None
    except openai.NotFoundError:
        return  # a server without a model list: the first requests will tell
    except openai.APIError as e:
        cause = redact(f"cannot use {api.base_url}: {type(e).__name__}: {e}", key)
        raise PreflightError("judge API", f"{section}.api.base_url", cause) from None
    finally:
        client.close()
    if served and judge.model not in served:
        raise PreflightError(
            "judge model",
            model_key or f"{section}.model",
            f"{judge.model!r} is not served at {api.base_url}; it serves: {', '.join(served)}",
        )


def check_judge(judge: JudgeConfig, ask_server: bool = True) -> None:
    """The judge model exists (a local folder) or is a well-formed hub id, and its tokenizer
    loads: the prompt stage needs it, and without it every row would fail much later. An
    API judge's model is a served name: the server is asked instead (`check_api`)."""
    from alpagasus_ray.text.tokenizer_probe import TokenizerProbeError, probe_tokenizer

    if judge.engine == "openai" and ask_server:
        check_api(judge)
    keys = ("model", "tokenizer") if judge.loads_model() else ("tokenizer",)
    for key in keys:
        name = getattr(judge, key)
        if name is None or "://" in name:
            continue
        local = name.startswith(("/", ".", "~")) or os.sep in name.strip("/").replace("/", "", 1)
        if local and not os.path.exists(os.path.expanduser(name)):
            raise PreflightError("judge model", f"judge.{key}", f"no such folder {name!r}")
        if not os.path.exists(os.path.expanduser(name)) and not _HUB_ID.match(name):
            raise PreflightError(
                "judge model", f"judge.{key}", f"{name!r} is neither a folder nor a hub id"
            )
    name = judge.tokenizer_name()
    if name is None or "://" in name:
        return  # fetched by the replicas themselves; set judge.tokenizer to check it here
    key = "judge.tokenizer" if judge.tokenizer else "judge.model"
    folder = os.path.expanduser(name)
    if os.path.isdir(folder) and not any(map(_TOKENIZER_FILE.match, os.listdir(folder))):
        raise PreflightError(
            "judge tokenizer", key, f"no tokenizer files in {name!r} (tokenizer.json, ...)"
        )  # transformers would say it cannot convert a slow tokenizer: true, and no help
    scale = judge.engine_judge().scale  # with criteria, the scores of all their scales
    try:
        facts = probe_tokenizer(name, judge.trust_remote_code, scale)  # in a child
    except TokenizerProbeError as e:
        raise PreflightError("judge tokenizer", key, f"cannot load {name!r}: {e}") from None
    if judge.mode == "logprobs" and judge.loads_model() and facts["score_tokens_error"]:
        raise PreflightError("judge tokenizer", key, _criterion_said(judge, name, facts))


def _criterion_said(judge: JudgeConfig, name: str, facts: dict[str, Any]) -> str:
    """The score-token refusal as the scale it is about: with criteria, the first
    criterion's whose own scale the tokenizer cannot serve."""
    from alpagasus_ray.text.tokenizer_probe import probe_tokenizer

    for criterion, c in judge.criteria.items():
        own = probe_tokenizer(name, judge.trust_remote_code, c.scale)["score_tokens_error"]
        if own:
            return own.replace("judge.scale", f"judge.criteria.{criterion}.scale", 1)
    return facts["score_tokens_error"]
