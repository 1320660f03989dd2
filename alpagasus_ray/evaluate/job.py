"""The paper's evaluation as Ray Data jobs: answers -> pairwise judgements -> outcomes.

1. Every test set is read as it is stored and normalised to (test_set, question_id,
   instruction, input, question); each model answers with the Alpaca template, one
   prompt -> generate -> finish chain per model, written to `answers/`.
2. Each pair of models is judged on every question in both orders with the paper's pairwise
   prompt, written to `judgments/` with the judge's raw text.
3. The driver combines the (small) judgement table into per-question outcomes and the
   report (`eval_report.py`). The rule is in `pairwise.py` and the README.

Generation and judging share one code path: the candidate models run as `JudgeConfig`s in
generate mode, so they get the same HF engine (or vLLM stage) as the filter's judge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import lru_cache
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from alpagasus_ray.config import InputConfig, JudgeConfig
from alpagasus_ray.evaluate.config import EvalConfig, TestSetConfig
from alpagasus_ray.evaluate.pairwise import pair_messages, parse_pair
from alpagasus_ray.io import (
    filesystem,
    join,
    parquet_dataset,
    prepare_output,
    read_input,
    write_json,
)
from alpagasus_ray.models import load_tokenizer, model_max_len
from alpagasus_ray.prompts import alpaca_prompt, encode_prompts, render
from alpagasus_ray.schema import RAW_JSON

log = logging.getLogger(__name__)

ANSWERS, JUDGMENTS, OUTCOMES_FILE = "answers", "judgments", "outcomes.parquet"
_IDS, _TEXT, _NTOK, _NPROMPT, _ERR = "_ids", "_gen_text", "_gen_tokens", "_n_prompt", "_gen_error"
_INTERNAL = (_IDS, _TEXT, _NTOK, _NPROMPT, _ERR)
QUESTION_COLUMNS = ("test_set", "question_id", "instruction", "input", "question", "problem")


# ---- reading the test sets --------------------------------------------------------------


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
            records = [_load(s) for s in table.column(RAW_JSON).to_pylist()]
        else:
            records = table.to_pylist()
        out: dict[str, list] = {c: [] for c in QUESTION_COLUMNS}
        for r in records:
            q = _dig(r, self.t.question) if r is not None else None
            q = q if isinstance(q, str) and q.strip() else None
            problem = None
            if q is None:
                problem = (
                    "malformed JSON" if r is None else f"no question text in {self.t.question!r}"
                )
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
    try:
        return json.loads(line)
    except ValueError:
        return None


# ---- prompt -> generate -> finish, for answers and judgements alike ----------------------


@lru_cache(maxsize=8)
def _context_len(model: str, tokenizer: str, trust_remote_code: bool) -> int:
    return model_max_len(model, load_tokenizer(tokenizer, trust_remote_code), trust_remote_code)


def _max_len(cfg: JudgeConfig) -> int:
    tok = cfg.tokenizer or cfg.model
    return cfg.max_model_len or _context_len(cfg.model, tok, cfg.trust_remote_code)


class PromptStage:
    """Builds and tokenizes prompts; rows that cannot fit the context get an error instead.

    kind="answer": the Alpaca template on the question. kind="judge": the pairwise prompt
    through the judge's chat template when it has one.
    """

    def __init__(self, cfg: JudgeConfig, kind: Literal["answer", "judge"]):
        self.cfg, self.kind = cfg, kind

    def __call__(self, table: pa.Table) -> pa.Table:
        cfg = self.cfg
        tok = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
        use_chat = cfg.chat_template == "auto" and bool(getattr(tok, "chat_template", None))
        rows = table.to_pylist()
        texts: list[str | None] = []
        errors: list[str | None] = []
        for r in rows:
            if self.kind == "answer" and r["problem"]:
                texts.append(None)
                errors.append(f"test set row: {r['problem']}")
            elif self.kind == "answer":
                texts.append(alpaca_prompt(r["instruction"], r["input"]))
                errors.append(None)
            elif r["answer_1"] is None or r["answer_2"] is None:
                texts.append(None)
                errors.append("a model produced no answer for this question")
            else:
                msgs = pair_messages(r["question"], r["answer_1"], r["answer_2"])
                texts.append(render(msgs, tok, use_chat))
                errors.append(None)
        todo = [i for i, t in enumerate(texts) if t is not None]
        enc = encode_prompts(tok, [texts[i] for i in todo], use_chat)
        ids: list[list[int] | None] = [None] * len(rows)
        limit = _max_len(cfg) - cfg.max_new_tokens
        for i, e in zip(todo, enc, strict=True):
            if len(e) > limit:
                errors[i] = f"prompt of {len(e)} tokens + {cfg.max_new_tokens} new > context"
            else:
                ids[i] = e
        n_prompt = [len(x) if x is not None else None for x in ids]
        return (
            table.append_column(_IDS, pa.array(ids, type=pa.list_(pa.int64())))
            .append_column(_NPROMPT, pa.array(n_prompt, type=pa.int64()))
            .append_column(_ERR, pa.array(errors, type=pa.string()))
        )


class HFGenerateStage:
    """One actor per replica: the model loads once, then generates greedily for each batch."""

    def __init__(self, cfg: JudgeConfig):
        from alpagasus_ray.engines import make_engine

        self.engine = make_engine(cfg)

    def __call__(self, table: pa.Table) -> pa.Table:
        ids = table.column(_IDS).to_pylist()
        todo = [i for i, x in enumerate(ids) if x is not None]
        outs = self.engine.judge([ids[i] for i in todo]) if todo else []
        text: list[str | None] = [None] * table.num_rows
        ntok: list[int | None] = [None] * table.num_rows
        errors = table.column(_ERR).to_pylist()
        for i, o in zip(todo, outs, strict=True):
            text[i], ntok[i] = (None if o.error else o.text), o.num_output_tokens
            errors[i] = o.error
        table = table.set_column(
            table.schema.get_field_index(_ERR), _ERR, pa.array(errors, pa.string())
        )
        return table.append_column(_TEXT, pa.array(text, pa.string())).append_column(
            _NTOK, pa.array(ntok, pa.int64())
        )


def generate(ds: Any, cfg: JudgeConfig, kind: Literal["answer", "judge"], task_cpus: float) -> Any:
    """prompt -> engine: adds _gen_text / _gen_tokens / _gen_error to every row."""
    ds = ds.map_batches(
        PromptStage(cfg, kind),
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        num_cpus=task_cpus,
    )
    if cfg.engine == "vllm":
        from alpagasus_ray.evaluate.generate_vllm import generate_with_vllm

        return generate_with_vllm(ds, cfg, task_cpus)
    replicas = cfg.replicas if isinstance(cfg.replicas, int) else tuple(cfg.replicas)
    return ds.map_batches(
        HFGenerateStage,
        fn_constructor_kwargs={"cfg": cfg},
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        concurrency=replicas,
        num_gpus=cfg.num_gpus_per_replica or None,
        num_cpus=cfg.num_cpus_per_replica,
    )


class FinishAnswers:
    """The model's answer columns; the internal ones go."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, table: pa.Table) -> pa.Table:
        text = [t.strip() if t is not None else None for t in table.column(_TEXT).to_pylist()]
        n = self.name
        cols = {
            f"answer__{n}": pa.array(text, pa.string()),
            f"answer_tokens__{n}": table.column(_NTOK),
            f"answer_error__{n}": table.column(_ERR),
        }
        table = table.drop_columns(list(_INTERNAL))
        for name, col in cols.items():
            table = table.append_column(name, col)
        return table


class PairRequests:
    """Question rows with every model's answer -> one row per (pair, order)."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs

    def __call__(self, table: pa.Table) -> pa.Table:
        out: list[dict[str, Any]] = []
        for r in table.to_pylist():
            for a, b in self.pairs:
                for order, (m1, m2) in (("ab", (a, b)), ("ba", (b, a))):
                    out.append(
                        {
                            **{c: r[c] for c in ("test_set", "question_id", "question")},
                            "model_a": a,
                            "model_b": b,
                            "order": order,
                            "assistant_1": m1,
                            "assistant_2": m2,
                            "answer_1": r[f"answer__{m1}"],
                            "answer_2": r[f"answer__{m2}"],
                        }
                    )
        schema = pa.schema([(c, pa.string()) for c in REQUEST_COLUMNS])
        return pa.Table.from_pylist(out, schema=schema)


REQUEST_COLUMNS = (
    "test_set", "question_id", "question", "model_a", "model_b", "order",
    "assistant_1", "assistant_2", "answer_1", "answer_2",
)  # fmt: skip


def finish_judgments(table: pa.Table) -> pa.Table:
    """Parsed scores next to the raw text; status ok / unparseable / error, never a guess."""
    texts = table.column(_TEXT).to_pylist()
    errors = table.column(_ERR).to_pylist()
    s1: list[float | None] = []
    s2: list[float | None] = []
    status: list[str] = []
    for text, err in zip(texts, errors, strict=True):
        pair = None if err else parse_pair(text)
        s1.append(pair[0] if pair else None)
        s2.append(pair[1] if pair else None)
        status.append("error" if err else "ok" if pair else "unparseable")
    return (
        table.drop_columns([_IDS, _TEXT, _NTOK, _ERR, _NPROMPT])
        .append_column("judge_text", pa.array(texts, pa.string()))
        .append_column("score_1", pa.array(s1, pa.float64()))
        .append_column("score_2", pa.array(s2, pa.float64()))
        .append_column("status", pa.array(status, pa.string()))
        .append_column("error", pa.array(errors, pa.string()))
        .append_column("num_prompt_tokens", table.column(_NPROMPT))
        .append_column("num_output_tokens", table.column(_NTOK))
    )


# ---- the job ------------------------------------------------------------------------------


def run_evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Answers, judgements, outcomes and report; returns the manifest (written last)."""
    import ray.data

    from alpagasus_ray.evaluate.report import combine_judgments, write_eval_report
    from alpagasus_ray.runtime import init_ray, package_versions

    init_ray(cfg.ray)
    fs, root = filesystem(cfg.output.uri, cfg.storage)
    prepare_output(fs, root, cfg.output.overwrite)
    light = cfg.ray.task_cpus
    started = time.time()

    ds = read_questions(cfg)
    for m in cfg.models:
        ds = generate(ds, cfg.generation.judge_config(m), "answer", light)
        ds = ds.map_batches(FinishAnswers(m.name), batch_format="pyarrow", num_cpus=light)
    ds.write_parquet(join(root, ANSWERS), filesystem=fs, ray_remote_args={"num_cpus": light})
    answered = time.time()

    pairs = cfg.model_pairs()
    ds = ray.data.read_parquet(join(root, ANSWERS), filesystem=fs, num_cpus=light)
    ds = ds.map_batches(PairRequests(pairs), batch_format="pyarrow", num_cpus=light)
    ds = generate(ds, cfg.judge, "judge", light)
    ds = ds.map_batches(finish_judgments, batch_format="pyarrow", num_cpus=light)
    ds.write_parquet(join(root, JUDGMENTS), filesystem=fs, ray_remote_args={"num_cpus": light})
    judged = time.time()

    answers = parquet_dataset(fs, join(root, ANSWERS)).to_table()
    judgments = parquet_dataset(fs, join(root, JUDGMENTS)).to_table()
    questions_read = read_questions(cfg).count()
    outcomes, checks = combine_judgments(judgments, pairs, questions_read)
    checks["questions_read"], checks["questions_answered"] = questions_read, answers.num_rows
    checks["ok"] = checks["ok"] and answers.num_rows == questions_read
    with fs.open(join(root, OUTCOMES_FILE), "wb") as f:
        pq.write_table(outcomes, f)
    set_order = [t.name for t in cfg.all_test_sets()]
    report = write_eval_report(fs, root, outcomes, judgments, pairs, set_order)
    manifest = {
        "status": "complete" if checks["ok"] else "inconsistent",
        "checks": checks,
        "questions": answers.num_rows,
        "judgments": judgments.num_rows,
        "pairs": [list(p) for p in pairs],
        "results": report["results"],
        "timings_s": {
            "answers": round(answered - started, 3),
            "judgments": round(judged - answered, 3),
            "total": round(time.time() - started, 3),
        },
        "versions": package_versions(),
        "config": cfg.model_dump(mode="json"),
    }
    write_json(fs, join(root, "manifest.json"), manifest)
    if not checks["ok"]:
        raise RuntimeError(f"evaluation output is inconsistent: {checks}")
    return manifest
