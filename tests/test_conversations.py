"""Conversation rows (`input.columns.messages`): OpenAI and ShareGPT turns told apart turn
by turn; the last assistant turn judged with the paper's rubric, the conversation so far as
its input; rows that cannot be judged quarantined with their reason; and the conversation
exported as it was read."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli_refusal, filter_args, job_config
from helpers import write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import ColumnMap
from alpagasus_ray.data.schema import RAW_JSON
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.export import export
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.stages import ValidateStage

FLAT = synthetic_examples(8, seed=17, unique=True)


def openai(*texts: str, system: str | None = None) -> list[dict[str, str]]:
    roles = ["user", "assistant"] * len(texts)
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": r, "content": t} for r, t in zip(roles, texts, strict=False)]


def sharegpt(*texts: str) -> list[dict[str, str]]:
    speakers = ["human", "gpt"] * len(texts)
    return [{"from": s, "value": t} for s, t in zip(speakers, texts, strict=False)]


GOOD = [
    {"messages": openai("Hi", "Hello", "What is 2+2?", "4", system="Be brief.")},
    {"messages": sharegpt("Name a colour.", "Blue.")},
    {"messages": openai("Tell me a joke.", "Knock knock.\n  Who's there? ")},
]
BAD = [
    ({"messages": openai("only a question")}, "no_assistant_turn"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "unknown_role"),
    ({"messages": [{"role": "user", "content": ""}]}, "invalid_turn"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "invalid_turn"),
    ({"messages": [{"text": "hi"}]}, "invalid_turn"),
    ({"messages": "not a list"}, "invalid_turn"),
    ({"messages": None}, "null_field"),
    ({"other": 1}, "missing_field"),
]


def validated(records: list[dict]) -> list[dict]:
    table = pa.table({RAW_JSON: [json.dumps(r) for r in records]})
    return ValidateStage(ColumnMap(messages="messages"))(table).to_pylist()


def test_the_last_answer_is_judged_with_the_conversation_so_far_as_its_input():
    rows = validated(GOOD)
    assert [(r["instruction"], r["input"], r["output"]) for r in rows] == [
        ("What is 2+2?", "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello", "4"),
        ("Name a colour.", "", "Blue."),
        ("Tell me a joke.", "", "Knock knock.\n  Who's there? "),
    ]
    assert all(r["decision"] is None for r in rows)
    assert [json.loads(r["messages"]) for r in rows] == [g["messages"] for g in GOOD]


def test_a_conversation_that_cannot_be_judged_is_quarantined_with_its_reason():
    rows = validated([record for record, _ in BAD])
    assert [(r["decision"], r["reason"]) for r in rows] == [
        ("quarantined", reason) for _, reason in BAD
    ]
    assert "role 'tool'" in rows[1]["reason_detail"]


def test_parquet_conversations_read_as_json_ones():
    table = pa.Table.from_pylist([{"messages": openai("Hi", "Hello")}])
    rows = ValidateStage(ColumnMap(messages="messages"))(table).to_pylist()
    assert (rows[0]["instruction"], rows[0]["output"]) == ("Hi", "Hello")


@pytest.fixture(scope="module")
def judged(ray_session, tiny_judge, tmp_path_factory):
    """Conversations and bad rows, and the same rows flat, through the tiny HF judge."""
    base = tmp_path_factory.mktemp("chat")
    one_turn = [{"messages": openai(r["instruction"], r["output"])} for r in FLAT]
    records = [*GOOD, *one_turn, *(record for record, _ in BAD)]
    write_jsonl(base / "in" / "chat.jsonl", records)
    out = base / "out"
    cfg = job_config(str(base / "in"), str(out), tiny_judge, input__columns__messages="messages",
                     filter__threshold=0.0)  # fmt: skip
    manifest = run_filter(cfg)
    flat = [{**r, "input": ""} for r in FLAT]
    write_jsonl(base / "flat" / "flat.jsonl", flat)
    run_filter(job_config(str(base / "flat"), str(base / "flat-out"), tiny_judge))
    return base, manifest, records


def stored_rows(out) -> list[dict]:
    import pyarrow.dataset as pads

    return pads.dataset(out / "data", format="parquet", partitioning="hive").to_table().to_pylist()


def test_a_one_turn_conversation_scores_as_its_flat_row(judged):
    base, manifest, records = judged
    assert manifest.status == "complete" and manifest.rows_read == len(records)
    assert manifest.counts["quarantined"] == len(BAD)
    key = ("instruction", "output")
    chat = {tuple(r[k] for k in key): r["score"] for r in stored_rows(base / "out")}
    flat = {tuple(r[k] for k in key): r["score"] for r in stored_rows(base / "flat-out")}
    for r in FLAT:
        pair = tuple(r[k] for k in key)
        assert chat[pair] == pytest.approx(flat[pair], abs=1e-4)


def test_export_writes_each_conversation_as_it_was_read(judged, tmp_path, capsys):
    base, _, records = judged
    out = str(base / "out")
    judged_ok = [r for r in records if r not in [b for b, _ in BAD]]
    want = [next(iter(r.values())) for r in judged_ok]
    export(out, "messages", str(tmp_path / "m.jsonl"), "kept")
    got = [json.loads(x)["messages"] for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    as_openai = [[{"role": {"human": "user", "gpt": "assistant"}.get(t.get("role", t.get("from")),
                  t.get("role", t.get("from"))), "content": t.get("content", t.get("value"))}
                  for t in w] for w in want]  # fmt: skip
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, as_openai))
    export(out, "sharegpt", str(tmp_path / "s.jsonl"), "kept")
    shared = [json.loads(x)["conversations"] for x in (tmp_path / "s.jsonl").read_text().split("\n")
              if x]  # fmt: skip
    assert {t["value"] for c in shared for t in c} == {t["content"] for c in got for t in c}
    line, _ = cli_refusal(capsys, ["export", out, "--format", "alpaca", "--to",
                                   str(tmp_path / "a.json")])  # fmt: skip
    assert "is a conversation of 5 turns" in line and "--format messages or sharegpt" in line
    assert not (tmp_path / "a.json").exists()
    export(out, "parquet", str(tmp_path / "p.parquet"), "kept")
    assert "messages" in pq.read_schema(tmp_path / "p.parquet").names


def test_the_cli_maps_a_conversation_column_and_refuses_a_missing_one(capsys, tmp_path, stand_in):
    write_jsonl(tmp_path / "in.jsonl", GOOD)
    args = filter_args(tmp_path, tmp_path / "in.jsonl", stand_in)
    args += ["--set", "input.columns.messages=conversation"]
    line, _ = cli_refusal(capsys, args, before_ray=True)
    assert "input.columns.messages=conversation" in line and "no column 'conversation'" in line
    assert main([*args[:-1], "input.columns.messages=messages"]) == 0


@pytest.mark.parametrize("layout", ["paper", "prefix"])
def test_a_one_turn_conversation_is_prompted_as_its_flat_row(tiny_judge, layout):
    """The prompt is what every engine is given (token ids; an API judge the same text), so
    a conversation and its Alpaca row are judged alike on any engine."""
    from alpagasus_ray.core.config import JudgeConfig
    from alpagasus_ray.data.schema import PROMPT_TOKEN_IDS
    from alpagasus_ray.filter.stages import PromptStage

    stage = PromptStage(JudgeConfig(model=str(tiny_judge), engine="hf", layout=layout))
    chats = [{"messages": openai(r["instruction"], r["output"])} for r in FLAT]
    chat = ValidateStage(ColumnMap(messages="messages"))(
        pa.table({RAW_JSON: [json.dumps(c) for c in chats]})
    )
    flat = ValidateStage(ColumnMap())(
        pa.table({RAW_JSON: [json.dumps({**r, "input": ""}) for r in FLAT]})
    )
    got = stage(chat).column(PROMPT_TOKEN_IDS).to_pylist()
    assert got == stage(flat).column(PROMPT_TOKEN_IDS).to_pylist()
    assert all(got)
