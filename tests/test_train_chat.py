"""Conversation rows for fine-tuning: the model's chat template, the loss on the assistant
turns only (labels decoded back to the answers), the stage's skips, and the refusal of a
tokenizer without a chat template before Ray starts."""

from __future__ import annotations

import copy
import json

import pyarrow as pa
import pytest
import yaml
from conftest import cli_refusal, job_config
from helpers import write_jsonl

from alpagasus_ray.demo import build_tiny_model
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.text.models import load_tokenizer
from alpagasus_ray.train.chat import (
    IGNORE_INDEX,
    NOT_TURN_BY_TURN,
    answer_spans,
    encode_conversation,
)
from alpagasus_ray.train.config import TrainConfig
from alpagasus_ray.train.data import EncodeStage, check_conversations, training_dataset

CHAT = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "The colour of the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And of grass?"},
    {"role": "assistant", "content": "Green."},
]


@pytest.fixture(scope="module")
def tok(tiny_judge):
    return load_tokenizer(str(tiny_judge), padding_side="right")


def targets(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The runs of consecutive target tokens, each as its ids (checked against `ids`)."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def test_labels_are_the_assistant_turns_through_the_template(tok):
    ids, labels, skip = encode_conversation(tok, CHAT, max_length=512)
    assert skip is None
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert tok.decode(ids) == text  # the model's own rendering, nothing added
    # Each answer with the template's end of turn (the tiny model's: `</s>` and a newline),
    # so that the model learns to stop; the `<|assistant|>` header before it is context.
    answers = [tok.decode(run) for run in targets(ids, labels)]
    assert answers == ["Blue.</s>\n", "Green.</s>\n"]
    context = tok.decode([t for t, y in zip(ids, labels, strict=True) if y == IGNORE_INDEX])
    for turn in CHAT:
        if turn["role"] != "assistant":
            assert turn["content"] in context
    assert "Blue." not in context and "Green." not in context


def test_each_answer_span_is_what_its_turn_adds_to_the_rendering(tok):
    text, spans = answer_spans(tok, CHAT)
    for (start, end), i in zip(spans, (2, 4), strict=True):
        before = tok.apply_chat_template(CHAT[:i], tokenize=False, add_generation_prompt=True)
        assert text[:start] == before and CHAT[i]["content"] in text[start:end]


def test_truncation_keeps_the_context_and_drops_rows_with_no_answer_left(tok):
    ids, labels, _ = encode_conversation(tok, CHAT, max_length=512)
    first = labels.index(next(y for y in labels if y != IGNORE_INDEX))
    cut_ids, cut_labels, skip = encode_conversation(tok, CHAT, max_length=first + 1)
    assert skip is None and cut_ids == ids[: first + 1] and cut_labels == labels[: first + 1]
    assert encode_conversation(tok, CHAT, max_length=first) == ([], [], "no_response_tokens")


def test_a_template_that_does_not_render_turn_by_turn_is_a_skip(tok):
    odd = copy.deepcopy(tok)  # load_tokenizer's is shared: a copy to change
    odd.chat_template = "{{ messages | length }}{% for m in messages %} {{ m.content }}{% endfor %}"
    assert encode_conversation(odd, CHAT, max_length=512) == ([], [], NOT_TURN_BY_TURN)


def test_the_stage_reads_a_conversation_as_a_list_or_as_json_text(tiny_judge, tok):
    sharegpt = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]
    table = pa.table({"messages": [json.dumps(CHAT), json.dumps(sharegpt), "[{", "[]"],
                      "decision": ["kept", "kept", "kept", "kept"]})  # fmt: skip
    out = EncodeStage(str(tiny_judge), 512, messages="messages")(table).to_pylist()
    assert [r["skip"] for r in out] == [None, None, "malformed_json", "no_assistant_turn"]
    expected, _, _ = encode_conversation(tok, CHAT, max_length=512)
    assert out[0]["input_ids"] == expected
    (answer,) = targets(out[1]["input_ids"], out[1]["labels"])
    assert tok.decode(answer).startswith("Hello.")
    listed = pa.table({"messages": [CHAT], "decision": ["rejected"]})
    stage = EncodeStage(str(tiny_judge), 512, decisions=("kept",), messages="messages")
    assert stage(listed).to_pylist()[0]["skip"] == "rejected"  # a partition not asked for


def train_config(tmp_path, data: dict, model) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"name": str(model)},
        "data": data,
        "run": {"name": "chat", "storage_path": str(tmp_path / "runs"), "num_workers": 1},
    })  # fmt: skip


def test_conversations_with_a_model_without_a_chat_template_are_refused_before_ray(
    tmp_path, capsys
):
    plain = build_tiny_model(tmp_path / "plain", chat_template=False)
    src = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CHAT}])
    cfg = train_config(tmp_path, {"uri": str(src), "columns": {"messages": "messages"}}, plain)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    line, _ = cli_refusal(capsys, ["train", "--config", str(config)], before_ray=True)
    assert line == (
        f"alpagasus-ray train: conversation rows (model.tokenizer): {plain} has no chat "
        "template, so they cannot be rendered as the model will see them; use a chat "
        "model's tokenizer, or Alpaca rows"
    )
    alpaca = write_jsonl(tmp_path / "rows.jsonl", [{"instruction": "a", "output": "b"}])
    assert check_conversations(train_config(tmp_path, {"uri": str(alpaca)}, plain)) is None


def test_a_filter_output_of_conversations_trains_on_them(ray_session, stand_in, tiny_judge,
                                                         tok, tmp_path):  # fmt: skip
    """The filter keeps each conversation as JSON text; training that output finds the
    column in its manifest, and every kept row's labels are its answers."""
    chats = [CHAT[:3], CHAT, [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Yo."}]]
    src = write_jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in chats] * 4)
    out = tmp_path / "filtered"
    manifest = run_filter(job_config(str(src), str(out), stand_in, judge__engine="hash",
                                     input__columns__messages="messages",
                                     filter__threshold=0.0))  # fmt: skip
    assert manifest.counts == {"kept": 12, "rejected": 0, "quarantined": 0, "failed": 0}
    cfg = train_config(tmp_path, {"uri": str(out), "allow_stand_in_judge": True}, tiny_judge)
    column = check_conversations(cfg)
    assert column == "messages"
    ds, counts = training_dataset(cfg, column)
    assert counts["template"] == "chat" and counts["examples"] == 12
    rows = ds.take_all()
    answers = [tuple(tok.decode(run) for run in targets(list(r["input_ids"]), list(r["labels"])))
               for r in rows]  # fmt: skip
    one, two = ("Blue.</s>\n",), ("Blue.</s>\n", "Green.</s>\n")
    assert sorted(answers) == sorted([one, two, ("Yo.</s>\n",)] * 4)

    # The same file trained on as it is, its column named: the same rows, the same ids.
    as_is = train_config(tmp_path, {"uri": str(src), "columns": {"messages": "messages"}},
                         tiny_judge)  # fmt: skip
    ds, counts = training_dataset(as_is, check_conversations(as_is))
    assert counts["template"] == "chat" and counts["examples"] == 12
    assert sorted(r["input_ids"] for r in ds.take_all()) == sorted(r["input_ids"] for r in rows)
