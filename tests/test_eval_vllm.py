"""The evaluation's vLLM adapter: rows in (token ids, greedy params), text out, engine errors
and prompt-less rows kept as errors. No engine is started (CPU)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.engines.vllm import ENGINE_COLUMNS, ERROR_COLUMN
from alpagasus_ray.evaluate.generate_vllm import SKIPPED, VLLMRequest, postprocess, vllm_result


def _cfg(model: str) -> JudgeConfig:
    return JudgeConfig(model=model, engine="vllm", mode="generate", max_new_tokens=16)


def test_request_rows(tiny_judge):
    table = pa.table(
        {
            "question": ["q1", "q2"],
            "_ids": pa.array([[1, 2, 3], None], pa.list_(pa.int64())),
            "_gen_error": pa.array([None, "prompt too long"], pa.string()),
        }
    )
    out = VLLMRequest(_cfg(str(tiny_judge)))(table).to_pylist()
    assert out[0]["tokenized_prompt"] == [1, 2, 3] and out[0][ERROR_COLUMN] == ""
    assert out[0]["sampling_params"] == {"temperature": 0.0, "max_tokens": 16}
    assert out[1]["tokenized_prompt"] is None and out[1][ERROR_COLUMN] == SKIPPED
    assert "_ids" not in out[0]


def test_result_rows():
    # As Ray's stage leaves them: a success through postprocess, an engine failure and a
    # skipped row passed through with the error column set.
    ok = postprocess(
        {"question": "q1", "_gen_error": None, "generated_text": "8 7\nok",
         "num_generated_tokens": 4, "tokenized_prompt": [1], "metrics": {}, ERROR_COLUMN: ""}
    )  # fmt: skip
    assert not set(ok) & ENGINE_COLUMNS
    failed = {"question": "q2", "_gen_error": None, ERROR_COLUMN: "CUDA OOM"}
    skipped = {"question": "q3", "_gen_error": "prompt too long", ERROR_COLUMN: SKIPPED}
    for rows in ([ok], [failed, skipped]):  # blocks of either kind get the same schema
        table = pa.Table.from_pylist(rows)
        out = vllm_result(table)
        assert out.column_names == ["question", "_gen_error", "_gen_text", "_gen_tokens", "_ids"]
    got = vllm_result(pa.Table.from_pylist([failed, skipped])).to_pylist()
    assert got[0]["_gen_error"] == "CUDA OOM" and got[0]["_gen_text"] is None
    assert got[1]["_gen_error"] == "prompt too long"
    assert vllm_result(pa.Table.from_pylist([ok])).to_pylist()[0]["_gen_text"] == "8 7\nok"


def test_sampling_params_are_valid_vllm(tiny_judge):
    vllm = pytest.importorskip("vllm")
    params = VLLMRequest(_cfg(str(tiny_judge))).params
    sp = vllm.SamplingParams(**params)
    assert sp.temperature == 0.0 and sp.max_tokens == 16
