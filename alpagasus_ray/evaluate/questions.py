"""The test sets, each read as it is stored, as one Ray Dataset of question rows."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from alpagasus_ray.core.config import InputConfig
from alpagasus_ray.data.read import read_input
from alpagasus_ray.data.records import lone_surrogate
from alpagasus_ray.data.schema import RAW_JSON, READ_ERROR, read_column
from alpagasus_ray.evaluate.config import EvalConfig, TestSetConfig

QUESTION_COLUMNS = ("test_set", "question_id", "instruction", "input", "question", "problem")


def _dig(record: Any, dotted: str) -> Any:
    """record["instances"][0]["input"] for "instances.0.input"; None where it is absent."""
    node = record
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


class NormalizeStage:
    """A test set's own rows -> the common question columns (the paper's judge question
    for an item with input is "{instruction} Input: {input}", as in its reference code).

    A row without question text keeps a null question: it is answered by nobody, judged as
    an error and counted in the report, rather than failing the whole job.
    """

    def __init__(self, t: TestSetConfig):
        self.t = t

    def __call__(self, table: pa.Table) -> pa.Table:
        if RAW_JSON in table.column_names:
            errors = read_column(table, READ_ERROR)
            texts = table.column(RAW_JSON).to_pylist()
            # A record the reader could not trust (bytes that are not UTF-8) is an error row.
            records = [None if e else _load(s) for s, e in zip(texts, errors, strict=True)]
        else:
            records = table.to_pylist()
        out: dict[str, list] = {c: [] for c in QUESTION_COLUMNS}
        for r in records:
            q = _dig(r, self.t.question) if r is not None else None
            q = q if isinstance(q, str) and q.strip() else None
            problem = None
            if q is None:
                problem = f"no question text in {self.t.question!r}"
                problem = "malformed JSON or text" if r is None else problem
            inp = _dig(r, self.t.input) if self.t.input and r is not None else None
            inp = str(inp) if inp else ""
            qid = _dig(r, self.t.id) if self.t.id and r is not None else None
            if qid is None:
                key = q or json.dumps(r, sort_keys=True, default=str)
                qid = hashlib.sha256(key.encode()).hexdigest()[:12]
            out["test_set"].append(self.t.name)
            out["question_id"].append(str(qid))
            out["instruction"].append(q)
            out["input"].append(inp)
            out["question"].append(f"{q} Input: {inp}" if inp and q else q)
            out["problem"].append(problem)
        return pa.table({c: pa.array(v, type=pa.string()) for c, v in out.items()})


def read_questions(cfg: EvalConfig) -> Any:
    """All test sets as one Ray Dataset of question rows."""
    light = cfg.ray.task_cpus
    parts = []
    for t in cfg.all_test_sets():
        limits = [x for x in (t.limit, cfg.limit) if x]
        inp = InputConfig(uri=cfg.test_set_uri(t), limit=min(limits) if limits else None)
        ds = read_input(inp, cfg.storage, light)
        parts.append(ds.map_batches(NormalizeStage(t), batch_format="pyarrow", num_cpus=light))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _load(line: str) -> Any:
    """A record, or None when it is not JSON or holds a lone surrogate (`\\ud800`), which
    no Arrow column can store."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return None if lone_surrogate(line, record) else record
