"""The evaluate job: config, reading the test sets as stored, combining both orders into
outcomes, the report, and the whole job end to end on tiny random models (real Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import ConfigError, StorageConfig, build_config, load_config
from alpagasus_ray.data.io import filesystem, parquet_dataset
from alpagasus_ray.data.schema import RAW_JSON, READ_ERROR
from alpagasus_ray.demo import build_tiny_model
from alpagasus_ray.evaluate.config import PAPER_TEST_SETS, EvalConfig, ModelSpec, TestSetConfig
from alpagasus_ray.evaluate.generate import PromptStage
from alpagasus_ray.evaluate.job import check_models
from alpagasus_ray.evaluate.outcomes import combine_judgments
from alpagasus_ray.evaluate.questions import NormalizeStage
from alpagasus_ray.evaluate.report import BIAS_PNG, REPORT_MD, chart_name, write_eval_report
from alpagasus_ray.filter.preflight import PreflightError
from alpagasus_ray.text.models import load_tokenizer
from alpagasus_ray.text.prompts import alpaca_prompt, encode_prompts

EXAMPLE = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "evaluate.yaml"
SIZES = {"vicuna": 80, "koala": 180, "wizardlm": 218, "sinstruct": 252}
PNG_MAGIC = b"\x89PNG"


def base_config(**extra) -> dict:
    return {
        "models": [{"name": "a", "path": "/m/a"}, {"name": "b", "path": "/m/b"}],
        "judge": {"model": "/m/judge"},
        "output": {"uri": "/tmp/out"},
        **extra,
    }


def test_example_config_validates():
    cfg = load_config(EXAMPLE, model=EvalConfig)
    assert cfg.model_pairs() == [("alpagasus", "alpaca")]
    assert [t.name for t in cfg.test_sets] == list(SIZES)
    assert cfg.judge.mode == "generate" and cfg.judge.max_new_tokens == 256


def test_config_defaults_and_errors():
    cfg = build_config(EvalConfig, base_config())
    assert cfg.judge.mode == "generate"  # the pairwise judge generates unless told otherwise
    assert cfg.model_pairs() == [("a", "b")]
    gen = cfg.generation.judge_config(cfg.models[0])
    assert (gen.model, gen.mode, gen.chat_template) == ("/m/a", "generate", "never")
    with pytest.raises(ConfigError, match="mode=generate"):
        build_config(EvalConfig, base_config(judge={"model": "j", "mode": "logprobs"}))
    with pytest.raises(ConfigError, match="stand-in: it cannot judge pairs"):
        build_config(EvalConfig, base_config(judge={"model": "j", "engine": "hash"}))
    with pytest.raises(ConfigError, match="judge.criteria are the filter's"):
        criteria = {"a": {"rubric": "accuracy"}}
        build_config(EvalConfig, base_config(judge={"model": "j", "criteria": criteria}))
    with pytest.raises(ConfigError, match="pair"):
        build_config(EvalConfig, base_config(pairs=[["a", "c"]]))
    with pytest.raises(ConfigError, match="unique"):
        build_config(EvalConfig, base_config(models=[{"name": "a", "path": "x"}] * 2))
    with pytest.raises(ConfigError, match="models"):
        build_config(EvalConfig, base_config(models=[{"name": "a", "path": "x"}]))


def test_own_test_set_by_path_and_columns(tmp_path):
    extra = {"name": "mine", "path": str(tmp_path / "q.jsonl"), "question": "q.text"}
    cfg = build_config(EvalConfig, base_config(extra_test_sets=[extra]))
    assert [t.name for t in cfg.all_test_sets()] == [*SIZES, "mine"]
    assert cfg.test_set_uri(cfg.extra_test_sets[0]) == extra["path"]
    shipped = "alpagasus_ray/evaluate/test_sets/vicuna_test_set.jsonl"  # the package's own
    assert cfg.test_set_uri(cfg.test_sets[0]).endswith(shipped)
    mine = build_config(EvalConfig, base_config(data_dir="/d"))  # or the user's copy
    assert mine.test_set_uri(mine.test_sets[0]) == "/d/vicuna_test_set.jsonl"
    rows = NormalizeStage(cfg.extra_test_sets[0])(pa.table({"q": [{"text": "Hi?"}]}))
    row = rows.to_pylist()[0]
    assert row["question"] == "Hi?" and len(row["question_id"]) == 12  # hash: no id column
    with pytest.raises(ConfigError, match="unique"):
        build_config(EvalConfig, base_config(extra_test_sets=[{**extra, "name": "koala"}]))


def test_bad_test_set_rows_become_error_rows_not_a_crash(tiny_judge):
    t = TestSetConfig(name="mine", path="q.jsonl", question="q", id="id")
    lines = ['{"id": 1, "q": "Name a colour."}', "{broken", '{"id": 3, "q": ""}', '{"id": 4}']
    lines += ['{"id": 5, "q": "x \\ud800"}', '{"id": 6, "q": "caf\\udce9"}']  # not Unicode
    errors = [None] * 5 + ["invalid_text: byte 0xe9, which is not UTF-8, at character 20"]
    rows = NormalizeStage(t)(pa.table({RAW_JSON: lines, READ_ERROR: errors}))
    assert rows.column("problem").to_pylist() == [
        None,
        "malformed JSON or text",
        "no question text in 'q'",
        "no question text in 'q'",
        "malformed JSON or text",
        "malformed JSON or text",
    ]
    assert rows.column("question").to_pylist()[1:] == [None] * 5
    generation = build_config(EvalConfig, base_config()).generation
    cfg = generation.judge_config(ModelSpec(name="a", path=str(tiny_judge)))
    prompted = PromptStage(cfg, "answer")(rows).to_pylist()
    assert prompted[0]["_ids"] and prompted[0]["_gen_error"] is None
    for r in prompted[1:]:  # nothing to answer: an error the report counts, no generation
        assert r["_ids"] is None and r["_gen_error"].startswith("test set row: ")


def test_each_model_answers_on_its_own_engine_and_template(tiny_judge, tmp_path):
    api = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": None}
    models = [{"name": "a", "path": str(tiny_judge), "template": "chat"},
              {"name": "b", "path": "served-b", "engine": "openai", "api": api}]  # fmt: skip
    cfg = build_config(EvalConfig, base_config(models=models))
    a, b = (cfg.generation.judge_config(m) for m in cfg.models)
    assert (a.engine, a.chat_template, b.engine, b.chat_template) == ("hf", "auto", "openai",
                                                                      "never")  # fmt: skip
    assert b.api.base_url == api["base_url"] and a.api == cfg.generation.api
    row = {"test_set": "t", "question_id": "1", "instruction": "Name a colour.",
           "input": "Warm ones.", "question": "q", "problem": None}  # fmt: skip
    tok = load_tokenizer(str(tiny_judge))
    turn = [{"role": "user", "content": "Name a colour.\n\nWarm ones."}]
    chat = tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    (got,) = PromptStage(a, "answer")(pa.Table.from_pylist([row])).to_pylist()
    assert got["_ids"] == encode_prompts(tok, [chat], chat_rendered=True)[0]
    alpaca = cfg.generation.judge_config(ModelSpec(name="c", path=str(tiny_judge)))
    (got,) = PromptStage(alpaca, "answer")(pa.Table.from_pylist([row])).to_pylist()
    text = alpaca_prompt("Name a colour.", "Warm ones.")
    assert got["_ids"] == encode_prompts(tok, [text], chat_rendered=False)[0]

    bare = build_tiny_model(tmp_path / "no-template", chat_template=False)
    models = [{"name": "a", "path": str(bare), "template": "chat"}, {"name": "b", "path": "x"}]
    with pytest.raises(PreflightError, match=r"models.0.template.*no chat template"):
        check_models(build_config(EvalConfig, base_config(models=models)))


@pytest.mark.parametrize("spec", PAPER_TEST_SETS, ids=lambda s: s["name"])
def test_test_sets_read_as_stored(shared_data, spec):
    lines = (shared_data / spec["path"]).read_text().splitlines()
    assert len(lines) == SIZES[spec["name"]]
    t = TestSetConfig(**spec)
    out = NormalizeStage(t)(pa.table({RAW_JSON: lines})).to_pylist()
    assert len(out) == len(lines)
    assert len({r["question_id"] for r in out}) == len(lines)  # ids are unique
    assert all(r["instruction"].strip() and r["test_set"] == t.name for r in out)
    first = json.loads(lines[0])
    assert out[0]["question_id"] == str(first[spec["id"]])
    if spec["name"] == "sinstruct":
        # The reference code's judge question: "{instruction} Input: {input}" when there is one.
        inp = first["instances"][0]["input"]
        assert out[0]["input"] == inp
        assert out[0]["question"] == f"{first['instruction']} Input: {inp}"
        assert any(r["input"] == "" and r["question"] == r["instruction"] for r in out)
    else:
        assert all(r["input"] == "" and r["question"] == r["instruction"] for r in out)


def _judgment(ts, qid, order, s1, s2, status="ok", text="x"):
    a1, a2 = ("a", "b") if order == "ab" else ("b", "a")
    return {
        "test_set": ts, "question_id": qid, "question": "q", "model_a": "a", "model_b": "b",
        "order": order, "assistant_1": a1, "assistant_2": a2, "answer_1": "1", "answer_2": "2",
        "judge_text": text, "score_1": s1, "score_2": s2, "status": status, "error": None,
        "num_prompt_tokens": 10, "num_output_tokens": 3,
    }  # fmt: skip


def test_combine_and_report(tmp_path):
    rows = [
        # q1: A wins both orders. q2: A wins (ab) and loses (ba): tie, flipped.
        _judgment("s1", "q1", "ab", 9, 5), _judgment("s1", "q1", "ba", 4, 8),
        _judgment("s1", "q2", "ab", 9, 5), _judgment("s1", "q2", "ba", 8, 4),
        # q3: unreadable in one order -> unparseable, not a tie.
        _judgment("s2", "q3", "ab", 6, 6), _judgment("s2", "q3", "ba", None, None, "unparseable"),
        # q4: loses once, ties once -> lose.
        _judgment("s2", "q4", "ab", 3, 7), _judgment("s2", "q4", "ba", 5, 5),
    ]  # fmt: skip
    outcomes, checks = combine_judgments(pa.Table.from_pylist(rows), [("a", "b")], 4)
    assert checks["ok"] and checks["judged_in_both_orders"] == 4
    got = {r["question_id"]: (r["outcome"], r["flipped"]) for r in outcomes.to_pylist()}
    assert got == {
        "q1": ("win", False),
        "q2": ("tie", True),
        "q3": ("unparseable", None),
        "q4": ("lose", True),
    }
    fs, root = filesystem(str(tmp_path), StorageConfig())
    report = write_eval_report(fs, root, outcomes, pa.Table.from_pylist(rows), [("a", "b")])
    per = report["results"][0]["test_sets"]
    assert (per["all"]["win"], per["all"]["tie"], per["all"]["lose"]) == (1, 1, 1)
    assert per["all"]["unparseable"] == 1 and per["all"]["judgments"]["unparseable"] == 1
    assert per["all"]["winning_score"] == pytest.approx((1 - 1) / 3 + 1)
    assert per["s1"]["winning_score"] == pytest.approx(1.5)
    assert per["s1"]["flip_rate"] == 0.5 and per["s2"]["flip_rate"] == 1.0
    md = (tmp_path / REPORT_MD).read_text()
    assert "| a vs b | s1 | 2 | 1 | 1 | 0 | 0 | 1.500 | 0.500 | 4 / 0 / 0 |" in md
    for png in (chart_name("a", "b"), BIAS_PNG):
        assert (tmp_path / png).read_bytes().startswith(PNG_MAGIC)

    # A question judged in one order only is an inconsistency, not a quiet result.
    _, checks = combine_judgments(pa.Table.from_pylist(rows[:-1]), [("a", "b")], 4)
    assert not checks["ok"] and checks["judged_in_both_orders"] == 3


@pytest.fixture(scope="module")
def tiny_candidates(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("candidates")
    return build_tiny_model(root / "m1", seed=1), build_tiny_model(root / "m2", seed=2)


@pytest.mark.slow
def test_evaluate_end_to_end(ray_session, tiny_judge, tiny_candidates, shared_data, tmp_path):
    limit = 3
    out = tmp_path / "eval"
    cfg = {
        "models": [
            {"name": "filtered", "path": str(tiny_candidates[0])},
            {"name": "full", "path": str(tiny_candidates[1])},
        ],
        "generation": {"max_new_tokens": 16, "batch_size": 8, "num_cpus_per_replica": 0.5},
        "judge": {"model": str(tiny_judge), "max_new_tokens": 16, "batch_size": 8,
                  "num_cpus_per_replica": 0.5},
        "data_dir": str(shared_data),
        "limit": limit,
        "output": {"uri": str(out), "overwrite": True},
    }  # fmt: skip
    config = tmp_path / "evaluate.yaml"
    config.write_text(json.dumps(cfg))  # JSON is YAML
    assert main(["evaluate", "--config", str(config)]) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["checks"]["ok"]
    n_questions = limit * len(SIZES)

    fs, root = filesystem(str(out), StorageConfig())
    answers = parquet_dataset(fs, f"{root}/answers").to_table()
    assert answers.num_rows == n_questions
    assert sorted(set(answers.column("test_set").to_pylist())) == sorted(SIZES)
    for name in ("filtered", "full"):
        assert answers.column(f"answer__{name}").null_count == 0
        assert max(answers.column(f"answer_tokens__{name}").to_pylist()) <= 16

    judgments = parquet_dataset(fs, f"{root}/judgments").to_table()
    assert judgments.num_rows == 2 * n_questions  # every question judged twice
    keys = list(
        zip(
            *(judgments.column(c).to_pylist() for c in ("test_set", "question_id", "order")),
            strict=True,
        )
    )
    assert len(set(keys)) == len(keys)
    assert set(judgments.column("order").to_pylist()) == {"ab", "ba"}
    for r in judgments.to_pylist():
        assert r["status"] in ("ok", "unparseable", "error")
        assert (r["status"] == "ok") == (r["score_1"] is not None)
        assert (r["judge_text"] is None) == (r["status"] == "error")  # raw text kept

    outcomes = pq.read_table(out / "outcomes.parquet")
    assert outcomes.num_rows == n_questions
    per = manifest["results"][0]["test_sets"]
    for ts in [*SIZES, "all"]:
        s = per[ts]
        n = limit * (len(SIZES) if ts == "all" else 1)
        assert s["questions"] == n
        assert s["win"] + s["tie"] + s["lose"] + s["unparseable"] == n  # counts add up
        assert sum(s["judgments"].values()) == 2 * n
    md = (out / "report.md").read_text()
    assert "| filtered vs full | vicuna | 3 |" in md and "unparseable" in md
    for png in (chart_name("filtered", "full"), BIAS_PNG):
        assert (out / png).read_bytes().startswith(PNG_MAGIC)
