"""Contract tests against the real vllm package (CPU only: no engine is started).

Our config must build valid `vllm.SamplingParams` / `vllm.AsyncEngineArgs`, and real
`RequestOutput` / `CompletionOutput` / `Logprob` objects must go through Ray's own
`vLLMOutputData.from_vllm_engine_output`, Ray's processor wrappers and our stages into the
right scores and decisions, and into Parquet that reads back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

vllm = pytest.importorskip("vllm")
pytest.importorskip("vllm.outputs")

from conftest import job_config  # noqa: E402
from helpers import write_jsonl  # noqa: E402
from ray.llm._internal.batch.stages.common import maybe_convert_ndarray_to_list  # noqa: E402
from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData  # noqa: E402
from vllm.logprobs import append_logprobs_for_next_position  # noqa: E402
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402
from vllm.sampling_params import SamplingType  # noqa: E402

from alpagasus_ray.core.config import JudgeConfig  # noqa: E402
from alpagasus_ray.data.schema import (  # noqa: E402
    DECISION,
    ID,
    NUM_OUTPUT_TOKENS,
    NUM_PROMPT_TOKENS,
    OUTPUT_SCHEMA,
    PROMPT_TOKEN_IDS,
    REASON,
    REASON_DETAIL,
    SCORE,
    SCORE_MASS,
    SCORE_PROBS,
    conform,
)
from alpagasus_ray.demo import synthetic_examples  # noqa: E402
from alpagasus_ray.engines import score_token_ids  # noqa: E402
from alpagasus_ray.engines.vllm import (  # noqa: E402
    ENGINE_OUTPUT_COLUMNS,
    engine_kwargs,
    sampling_params,
)
from alpagasus_ray.filter.job import build_dataset  # noqa: E402
from alpagasus_ray.filter.stages.decide import DecideStage  # noqa: E402
from alpagasus_ray.filter.stages.vllm_score import (  # noqa: E402
    SKIPPED,
    VLLMRequestStage,
    VLLMResultStage,
    build_judge_processor,
    judge_score_tokens,
)
from alpagasus_ray.text.models import load_tokenizer  # noqa: E402

THRESHOLD = 4.0
OTHER_TOKEN = 7  # not a score digit in the tiny tokenizer (checked below)


def judge_cfg(model: Path, **kw: Any) -> JudgeConfig:
    return JudgeConfig(model=str(model), engine="vllm", min_score_mass=0.5, **kw)


@pytest.fixture(scope="module")
def digits(tiny_judge) -> dict[int, int]:
    """Score digit -> one token id that spells it, from the judge's own tokenizer."""
    ids = score_token_ids(load_tokenizer(str(tiny_judge)))
    assert OTHER_TOKEN not in ids
    return {d: min(t for t, dd in ids.items() if dd == d) for d in range(6)}


def prompt_table() -> pa.Table:
    """What the prompt stage hands the scorer: 5 pending rows, 1 quarantined row, and input
    columns named like engine columns (`model`, `prompt`) that must survive untouched."""
    n = 6
    ids: list[list[int] | None] = [[1, 5, 9, 11 + i] for i in range(n)]
    ids[4] = None
    table = pa.table(
        {
            ID: [f"r{i}" for i in range(n)],
            "instruction": [f"instruction {i}" for i in range(n)],
            "input": [""] * n,
            "output": [f"output {i}" for i in range(n)],
            "model": [f"gpt-{i}" for i in range(n)],
            "prompt": [f"user prompt {i}" for i in range(n)],
            DECISION: [None, None, None, None, "quarantined", None],
            REASON: [None, None, None, None, "prompt_too_long", None],
            REASON_DETAIL: [None, None, None, None, "9000 prompt tokens + 1 > 8192", None],
            PROMPT_TOKEN_IDS: pa.array(ids, pa.list_(pa.int32())),
            NUM_PROMPT_TOKENS: pa.array([4, 4, 4, 4, 9000, 4], pa.int32()),
        }
    )
    return conform(table)


def top_logprobs(probs: dict[int, float]) -> list[dict]:
    """One generated position's top-k, built by vLLM's own helper as its engine does."""
    order = sorted(probs, key=probs.get, reverse=True)
    sampled = order[0]
    container: list = []
    append_logprobs_for_next_position(
        container,
        [sampled, *order],
        [math.log(probs[sampled]), *(math.log(probs[t]) for t in order)],
        [None] * (len(order) + 1),
        1,
        len(order),
    )
    return container


def request_output(prompt_ids: list[int], text: str, tokens: list[int], logprobs=None):
    completion = CompletionOutput(
        index=0,
        text=text,
        token_ids=tokens,
        cumulative_logprob=None,
        logprobs=logprobs,
        finish_reason="length",
    )
    return RequestOutput(
        request_id="0",
        prompt="",
        prompt_token_ids=prompt_ids,
        prompt_logprobs=None,
        outputs=[completion],
        finished=True,
        num_cached_tokens=2,
    )


def engine_row(data: dict[str, Any], output: Any = None, error: str = "") -> dict[str, Any]:
    """A row as Ray's vLLM stage leaves it (vllm_engine_stage.py): request inputs popped,
    vLLMOutputData and bookkeeping merged in; on error the same keys with defaults."""
    row = dict(data)
    row.pop("tokenized_prompt")
    # The stage builds SamplingParams from the row: the contract for our dict.
    params = vllm.SamplingParams(**maybe_convert_ndarray_to_list(row.pop("sampling_params")))
    if error:
        dump = vLLMOutputData(prompt="", prompt_token_ids=None, num_input_tokens=0).model_dump()
        extra = {"request_id": -1, "time_taken_llm": -1, "params": ""}
    else:
        dump = vLLMOutputData.from_vllm_engine_output(output).model_dump()
        extra = {"request_id": 0, "time_taken_llm": 0.01, "params": str(params)}
    row.update({**dump, **extra, "batch_uuid": "b", "__inference_error__": error})
    return row


def prepared_rows(ray_session, judge: JudgeConfig) -> list[dict[str, Any]]:
    """Prompt-stage table -> our request stage -> Ray's real preprocess, on Ray Data."""
    tokens = judge_score_tokens(judge)
    processor = build_judge_processor(judge, 0.25, tokens)
    ds = ray_session.data.from_arrow(prompt_table())
    ds = ds.map_batches(VLLMRequestStage(judge, tokens), batch_format="pyarrow")
    rows = ds.map(processor.preprocess).take_all()
    return [r["__data"] for r in sorted(rows, key=lambda r: r["__data"][ID])]


def finish(ray_session, judge: JudgeConfig, rows: list[dict], out_dir: Path) -> dict[str, dict]:
    """Engine rows -> Ray's real postprocess wrapper -> result and decide stages -> Parquet.

    One row per block, so successes, failures and skipped rows each make blocks of their own
    (as they may in a real run): the written files must still share one schema and read
    back with a plain Parquet reader.
    """
    processor = build_judge_processor(judge, 0.25, judge_score_tokens(judge))
    items = [{"__data": r} for r in rows]
    ds = ray_session.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map(processor.postprocess)
    ds = ds.map_batches(VLLMResultStage(judge), batch_format="pyarrow")
    ds = ds.map_batches(DecideStage(THRESHOLD), batch_format="pyarrow")
    ds.write_parquet(str(out_dir))
    files = sorted(out_dir.glob("*.parquet"))
    schemas = {pads.dataset(str(f)).schema.remove_metadata() for f in files}
    assert len(schemas) == 1, schemas
    table = pads.dataset(str(out_dir)).to_table()
    for name in OUTPUT_SCHEMA.names:
        assert table.schema.field(name).type == OUTPUT_SCHEMA.field(name).type, name
    own_input = {"model", "prompt"}  # input columns of prompt_table(), restored by name
    leaked = set(table.column_names) & (ENGINE_OUTPUT_COLUMNS | {"__inference_error__"})
    leaked -= own_input
    assert not [c for c in table.column_names if c.startswith("__")]
    assert not leaked and PROMPT_TOKEN_IDS not in table.column_names
    return {r[ID]: r for r in table.to_pylist()}


def test_sampling_params_are_valid_vllm(tiny_judge, digits):
    tokens = judge_score_tokens(judge_cfg(tiny_judge))
    sp = vllm.SamplingParams(**sampling_params(judge_cfg(tiny_judge), tokens))
    assert sp.sampling_type == SamplingType.GREEDY
    # Exactly the score tokens' log-probabilities, no top-k that could miss a digit.
    assert sp.max_tokens == 1 and sp.logprobs is None
    assert sp.logprob_token_ids == sorted(tokens) and set(digits.values()) <= set(tokens)
    gen = vllm.SamplingParams(**sampling_params(judge_cfg(tiny_judge, mode="generate")))
    assert gen.sampling_type == SamplingType.GREEDY and gen.max_tokens == 256
    assert gen.logprobs is None


@pytest.mark.parametrize("tp", [1, 2])
def test_engine_args_are_valid_vllm(ray_session, tiny_judge, tp):
    j = judge_cfg(
        tiny_judge,
        max_model_len=2048,
        vllm={"tensor_parallel_size": tp, "engine_kwargs": {"enforce_eager": True}},
    )
    processor = build_judge_processor(j, 0.25, judge_score_tokens(j), "alpagasus-ray-test")
    stage = processor.get_stage_by_name("vLLMEngineStage")
    # Exactly what Ray's vLLMEngineWrapper hands vllm.AsyncEngineArgs.
    kwargs = dict(stage.fn_constructor_kwargs["engine_kwargs"])
    assert kwargs.pop("task_type") == "generate"
    kwargs.update(model=str(tiny_judge), runner="generate", enable_log_requests=False)
    args = vllm.AsyncEngineArgs(**kwargs)
    assert args.enable_prefix_caching is True and args.max_model_len == 2048
    assert args.tensor_parallel_size == tp and args.enforce_eager is True
    assert args.distributed_executor_backend == ("uni" if tp == 1 else "ray")
    assert args.gpu_memory_utilization == pytest.approx(0.90)
    kwargs.pop("enable_log_requests")
    assert vllm.EngineArgs(**kwargs).served_model_name == "alpagasus-ray-test"
    with pytest.raises(TypeError):  # the contract has teeth: a wrong name is refused
        vllm.EngineArgs(**kwargs, enable_prefix_cache=True)


def test_engine_kwargs_only_use_real_engine_args(tiny_judge):
    fields = set(vllm.EngineArgs.__dataclass_fields__)
    kwargs = engine_kwargs(judge_cfg(tiny_judge, tokenizer="t", max_model_len=64), "name")
    assert "served_model_name" in kwargs and set(kwargs) <= fields


def test_our_engine_column_list_covers_ray_output(tiny_judge):
    assert set(vLLMOutputData.model_fields) <= ENGINE_OUTPUT_COLUMNS


def test_logprobs_mode_end_to_end(ray_session, tiny_judge, digits, tmp_path):
    j = judge_cfg(tiny_judge)
    data = prepared_rows(ray_session, j)
    # The quarantined row enters the processor already marked: Ray skips it.
    assert data[4]["__inference_error__"] == SKIPPED and data[4]["tokenized_prompt"] is None
    assert all(data[i]["__inference_error__"] == "" for i in (0, 1, 2, 3, 5))
    assert list(data[0]["tokenized_prompt"]) == [1, 5, 9, 11]
    assert data[0][PROMPT_TOKEN_IDS] is None  # not shipped twice

    d = digits
    cases = {
        0: {d[4]: 0.6, d[5]: 0.2, OTHER_TOKEN: 0.2},  # 4.25: kept
        1: {d[1]: 0.7, d[2]: 0.3},  # 1.3: rejected
        2: {OTHER_TOKEN: 0.9, d[3]: 0.1},  # mass 0.1 < 0.5: failed
        5: {d[4]: 0.5, d[3]: 0.5},  # 3.5: rejected
    }
    rows = []
    for i, probs in cases.items():
        lp = top_logprobs(probs)
        out = request_output(list(data[i]["tokenized_prompt"]), "4", [max(probs)], lp)
        rows.append(engine_row(data[i], out))
    rows.append(engine_row(data[3], error="ValueError: prompt exceeds KV cache"))
    rows.append(data[4])  # passes the engine stage untouched

    got = finish(ray_session, j, rows, tmp_path / "out")
    assert len(got) == 6
    assert got["r0"][SCORE] == pytest.approx(4.25) and got["r0"][DECISION] == "kept"
    assert got["r0"][SCORE_PROBS] == pytest.approx([0, 0, 0, 0, 0.75, 0.25])
    assert got["r0"][SCORE_MASS] == pytest.approx(0.8)
    assert got["r0"][NUM_OUTPUT_TOKENS] == 1 and got["r0"][NUM_PROMPT_TOKENS] == 4
    assert got["r1"][SCORE] == pytest.approx(1.3) and got["r1"][DECISION] == "rejected"
    assert got["r5"][SCORE] == pytest.approx(3.5) and got["r5"][DECISION] == "rejected"
    assert got["r2"][DECISION] == "failed" and got["r2"][REASON] == "low_score_mass"
    assert got["r3"][DECISION] == "failed" and got["r3"][REASON] == "engine_error"
    assert got["r3"][REASON_DETAIL] == "ValueError: prompt exceeds KV cache"
    assert got["r4"][DECISION] == "quarantined" and got["r4"][REASON] == "prompt_too_long"
    # Input columns named like engine columns come back as they were.
    assert [got[f"r{i}"]["model"] for i in range(6)] == [f"gpt-{i}" for i in range(6)]
    assert got["r3"]["prompt"] == "user prompt 3"


def test_generate_mode_end_to_end(ray_session, tiny_judge, tmp_path):
    j = judge_cfg(tiny_judge, mode="generate")
    data = prepared_rows(ray_session, j)
    assert data[0]["sampling_params"]["max_tokens"] == 256
    texts = {0: "4.5\nA precise answer.", 1: "Score: 2", 2: "I cannot rate this.", 3: "5"}
    rows = [
        engine_row(data[i], request_output(list(data[i]["tokenized_prompt"]), t, [3, 4, 5]))
        for i, t in texts.items()
    ]
    rows += [engine_row(data[5], error="RuntimeError: boom"), data[4]]
    got = finish(ray_session, j, rows, tmp_path / "out")
    assert got["r0"][SCORE] == 4.5 and got["r0"][DECISION] == "kept"
    assert got["r0"]["judge_text"] == texts[0] and got["r0"][NUM_OUTPUT_TOKENS] == 3
    assert got["r1"][SCORE] == 2.0 and got["r1"][DECISION] == "rejected"
    assert got["r2"][DECISION] == "failed" and got["r2"][REASON] == "unparseable_judgement"
    assert got["r2"]["judge_text"] == texts[2]
    assert got["r3"][DECISION] == "kept"
    assert got["r5"][REASON] == "engine_error" and got["r4"][DECISION] == "quarantined"


def test_an_all_failed_block_writes_the_same_schema(ray_session, tiny_judge, tmp_path):
    """The ray.data.llm pitfall: a block with only error rows has no score columns at all."""
    j = judge_cfg(tiny_judge)
    data = prepared_rows(ray_session, j)
    rows = [engine_row(data[i], error="EngineError: x") for i in (0, 1)]
    only_failed = VLLMResultStage(j)(pa.Table.from_pylist(rows))
    decided = DecideStage(THRESHOLD)(only_failed)
    assert decided.schema.field(SCORE).type == pa.float64()
    assert decided.column(DECISION).to_pylist() == ["failed", "failed"]
    got = finish(ray_session, j, rows, tmp_path / "out")
    assert {r[REASON] for r in got.values()} == {"engine_error"}


def test_pipeline_is_one_pass_through_rays_engine_stage(ray_session, tiny_judge, tmp_path):
    """The job's plan (built, not run: no GPU here): one read, one chain, no branch/union,
    and Ray's vLLM stage between our request and result stages."""
    src = write_jsonl(tmp_path / "in" / "a.jsonl", synthetic_examples(4))
    # Metrics export off: it needs ray[serve], which this environment lacks (checked at start).
    cfg = job_config(
        str(src),
        str(tmp_path / "out"),
        tiny_judge,
        judge__engine="vllm",
        judge__vllm__log_engine_metrics=False,
    )
    plan = [line.strip().removeprefix("+- ") for line in str(build_dataset(cfg)).splitlines()]
    assert plan[:-1][::-1] == [
        "StreamingRepartition[num_rows_per_block=16,strict=False]",  # one file, many blocks
        "MapBatches(ValidateStage)",
        "MapBatches(PromptStage)",
        "MapBatches(VLLMRequestStage)",
        "Map(_preprocess)",
        "MapBatches(vLLMEngineStageUDF)",
        "Map(_postprocess)",
        "MapBatches(VLLMResultStage)",
        "MapBatches(DecideStage)",
    ]
    assert plan[-1].startswith("Dataset(")
