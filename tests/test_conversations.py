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


LONG = [
    {"messages": openai("Hi", "Hello", "What is 2+2?", "4", "And 3+3?", "6", system="Be brief.")},
    {"messages": sharegpt("Name a colour.", "Blue.", "Another?", "Red.")},
    {"messages": openai("Tell me a joke.", "Knock knock.")},
]


def truncated(record: dict) -> list[dict]:
    """A conversation cut after each of its answers: what `turns: each` rates, one by one."""
    turns = record["messages"]
    ends = [i for i, t in enumerate(turns) if t.get("role", t.get("from")) in ("assistant", "gpt")]
    return [{"messages": turns[: end + 1]} for end in ends]


@pytest.mark.parametrize("layout", ["paper", "prefix"])
def test_a_turn_prompt_extends_the_previous_one_through_its_answer(tiny_judge, layout):
    """What lets a prefix cache compute a conversation's history once under `each`."""
    from alpagasus_ray.core.config import JudgeConfig
    from alpagasus_ray.data.schema import TURN_PROMPT_IDS
    from alpagasus_ray.filter.stages import PromptStage
    from alpagasus_ray.text.models import load_tokenizer
    from alpagasus_ray.text.prompts import conversation_messages, render

    judge = JudgeConfig(model=str(tiny_judge), engine="hf", layout=layout, turns="each")
    table = ValidateStage(ColumnMap(messages="messages"))(
        pa.table({RAW_JSON: [json.dumps(LONG[0])]})
    )
    prompts = PromptStage(judge)(table).column(TURN_PROMPT_IDS).to_pylist()[0]
    assert len(prompts) == 3
    tokenizer = load_tokenizer(str(tiny_judge), False)
    turns = [{"role": t["role"], "content": t["content"]} for t in LONG[0]["messages"]]
    for k, (ids, longer) in enumerate(zip(prompts, prompts[1:], strict=False)):
        text = render(
            conversation_messages(turns[: 2 * k + 3], "accuracy", layout), tokenizer, True
        )
        answer = turns[2 * k + 2]["content"]
        through = text[: text.rindex(answer) + len(answer)]
        assert longer[: len(ids)] != ids  # a new prompt, not the old one continued
        shared = next(j for j, (a, b) in enumerate(zip(ids, longer, strict=False)) if a != b)
        assert shared >= len(tokenizer(through, add_special_tokens=False)["input_ids"]) - 1


@pytest.fixture(scope="module")
def each_turn(ray_session, tiny_judge, tmp_path_factory):
    """`turns: each` on conversations, and every conversation cut after each answer rated
    alone with `turns: last`, through the tiny HF judge."""
    base = tmp_path_factory.mktemp("turns")
    write_jsonl(base / "in" / "chat.jsonl", [*LONG, *(record for record, _ in BAD)])
    cut = [c for record in LONG for c in truncated(record)]
    write_jsonl(base / "cut" / "cut.jsonl", cut)
    sets = {"input__columns__messages": "messages", "filter__threshold": 0.0}
    each = run_filter(job_config(str(base / "in"), str(base / "out"), tiny_judge,
                                 judge__turns="each", **sets))  # fmt: skip
    run_filter(job_config(str(base / "cut"), str(base / "cut-out"), tiny_judge, **sets))
    return base, each


def scores_by_conversation(out) -> dict[str, dict]:
    """Kept rows by their conversation (stored as JSON text: a list of objects)."""
    rows = stored_rows(out)
    return {json.dumps(json.loads(r["messages"])): r for r in rows if r["decision"] == "kept"}


def test_each_turn_scores_as_that_turn_rated_alone_with_its_history(each_turn):
    base, manifest = each_turn
    assert manifest.status == "complete" and manifest.counts["quarantined"] == len(BAD)
    alone = {k: r["score"] for k, r in scores_by_conversation(base / "cut-out").items()}
    rows = scores_by_conversation(base / "out")
    for record in LONG:
        row = rows[json.dumps(record["messages"])]
        want = [alone[json.dumps(c["messages"])] for c in truncated(record)]
        assert row["turn_scores"] == pytest.approx(want, abs=1e-4)
        assert row["score"] == pytest.approx(min(row["turn_scores"]), abs=1e-9)
    quarantined = [r for r in stored_rows(base / "out") if r["decision"] == "quarantined"]
    assert all(r["turn_scores"] is None for r in quarantined)


def test_the_mean_aggregate_and_a_last_run_on_the_stand_in(ray_session, stand_in, tmp_path):
    """`mean` averages the turns; `last` rates the last answer alone, as `each` rated it."""
    write_jsonl(tmp_path / "in" / "chat.jsonl", LONG)
    sets = {"input__columns__messages": "messages", "filter__threshold": 0.0}
    runs = {}
    for name, extra in {"mean": {"judge__turns": "each", "judge__turn_aggregate": "mean"},
                        "last": {}}.items():  # fmt: skip
        run_filter(job_config(str(tmp_path / "in"), str(tmp_path / name), stand_in, **sets,
                              **extra))  # fmt: skip
        runs[name] = scores_by_conversation(tmp_path / name)
    for key, row in runs["mean"].items():
        assert row["score"] == pytest.approx(sum(row["turn_scores"]) / len(row["turn_scores"]))
        assert runs["last"][key]["score"] == pytest.approx(row["turn_scores"][-1])
        assert runs["last"][key]["turn_scores"] is None


def test_a_failed_turn_fails_its_conversation_and_names_the_turn():
    from alpagasus_ray.filter.turns import combine

    ok = {"score": 4.0, "num_output_tokens": 1}
    failed = {"decision": "failed", "reason": "low_score_mass", "reason_detail": "P = 0.1",
              "score": None, "num_output_tokens": 1}  # fmt: skip
    row = combine([ok, failed, ok], "min")
    assert (row["decision"], row["reason"]) == ("failed", "low_score_mass")
    assert row["reason_detail"] == "judged turn 2 of 3: P = 0.1"
    assert row["turn_scores"] == [4.0, None, 4.0] and row["num_output_tokens"] == 3
    low = combine([ok, {"score": 2.0, "score_mass": 0.9}], "min")
    assert (low["score"], low["score_mass"]) == (2.0, 0.9)


def test_vllm_turn_rows_come_back_whole_whatever_batches_they_return_in(tiny_judge):
    """vLLM's engine stage takes one prompt per row and re-batches: a conversation's turn
    rows meet again in the gather actor, however they were split and reordered."""
    import random

    from alpagasus_ray.core.config import JudgeConfig
    from alpagasus_ray.data.schema import PROMPT_TOKEN_IDS, SCORE, TURN_PROMPT_IDS
    from alpagasus_ray.filter.stages import PromptStage
    from alpagasus_ray.filter.stages.vllm_turns import TurnGather, explode_turns

    judge = JudgeConfig(model=str(tiny_judge), engine="hf", turns="each")
    records = [*LONG, {"messages": openai("Q", "A")}, *(record for record, _ in BAD[:2])]
    table = ValidateStage(ColumnMap(messages="messages"))(
        pa.table({RAW_JSON: [json.dumps(r) for r in records]})
    )
    prompted = PromptStage(judge)(table)
    want_turns = prompted.column(TURN_PROMPT_IDS).to_pylist()
    rows = explode_turns(prompted)
    assert rows.num_rows == 3 + 2 + 1 + 1 + 2  # turn rows, and the quarantined as they are
    fake = [
        None if ids is None else sum(ids) % 6 for ids in rows.column(PROMPT_TOKEN_IDS).to_pylist()
    ]
    rows = rows.set_column(rows.schema.get_field_index(SCORE), SCORE, pa.array(fake, pa.float64()))
    order = list(range(rows.num_rows))
    random.Random(3).shuffle(order)
    rows = rows.take(pa.array(order))
    gather = TurnGather("min")
    out = [gather(rows.slice(i, 2)) for i in range(0, rows.num_rows, 2)]
    assert gather.held == {}
    got = pa.concat_tables(out, promote_options="permissive").to_pylist()
    assert sorted(r["id"] for r in got) == sorted(prompted.column("id").to_pylist())
    for row in got:
        turns = want_turns[prompted.column("id").to_pylist().index(row["id"])]
        if turns is None:
            assert row["turn_scores"] is None
            continue
        assert row["turn_scores"] == [sum(ids) % 6 for ids in turns]
        assert row["score"] == min(row["turn_scores"])


def test_the_dry_run_counts_a_request_per_judged_turn(ray_session, stand_in, tmp_path):
    """`--dry-run` under `each` counts every turn's request and prompt tokens, and they are
    what the job then sends (the stand-in counts prompts as a server would, no tokenizer)."""
    from alpagasus_ray.filter.estimate import estimate, render

    write_jsonl(tmp_path / "in" / "chat.jsonl", [*LONG, BAD[0][0]])
    cfg = job_config(str(tmp_path / "in"), str(tmp_path / "out"), stand_in, judge__turns="each",
                     input__columns__messages="messages")  # fmt: skip
    dry = estimate(cfg)
    assert (dry["rows_to_judge"], dry["requests"], dry["answer_tokens_at_most"]) == (3, 6, 6)
    assert "1 a request; 6 requests" in render(dry, cfg)
    manifest = run_filter(cfg)
    assert manifest.engine_metrics["input_tokens"] == dry["prompt_tokens"] > 0


def test_turns_each_is_a_judge_setting_and_older_outputs_rerun_as_before(
    ray_session, stand_in, tmp_path
):
    """`each` is in the run's fingerprint only when on: an output written before the setting
    existed (its fingerprint without it) still reruns as a no-op or a re-decision, while a
    rerun that would judge the turns is refused before any row."""
    from alpagasus_ray.filter.preflight import PreflightError

    write_jsonl(tmp_path / "in" / "chat.jsonl", LONG)
    sets = {"input__columns__messages": "messages", "output__overwrite": False}
    cfg = job_config(str(tmp_path / "in"), str(tmp_path / "out"), stand_in, **sets)
    first = run_filter(cfg)
    assert not any(k.startswith("judge.turn") for k in first.fingerprint)
    assert run_filter(cfg).attempts == first.attempts  # an identical rerun: nothing judged
    again = job_config(str(tmp_path / "in"), str(tmp_path / "out"), stand_in, **sets,
                       filter__threshold=1.0)  # fmt: skip
    assert run_filter(again).threshold == 1.0  # re-decided from the stored scores
    each = job_config(str(tmp_path / "in"), str(tmp_path / "out"), stand_in, **sets,
                      judge__turns="each")  # fmt: skip
    with pytest.raises(PreflightError, match="judge.turns"):
        run_filter(each)


def test_an_output_from_before_conversations_reruns_as_before(ray_session, stand_in, tmp_path):
    """Its fingerprint's column map has no `messages` key: the same map, that key unset."""
    write_jsonl(tmp_path / "in" / "flat.jsonl", FLAT)
    cfg = job_config(str(tmp_path / "in"), str(tmp_path / "out"), stand_in,
                     output__overwrite=False)  # fmt: skip
    first = run_filter(cfg)
    manifest = tmp_path / "out" / "manifest.json"
    older = json.loads(manifest.read_text())
    del older["fingerprint"]["input.columns"]["messages"]
    manifest.write_text(json.dumps(older))
    assert run_filter(cfg).attempts == first.attempts  # still the same run: nothing judged
