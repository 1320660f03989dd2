"""The HF engine stage and the vLLM post-processing give the same scores and decisions for
the same judge outputs: the decision logic exists once."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import pyarrow as pa
import pytest

vllm = pytest.importorskip("vllm")
pytest.importorskip("vllm.outputs")

from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData  # noqa: E402
from vllm.logprobs import append_logprobs_for_next_position  # noqa: E402
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402

from alpagasus_ray.core.config import ColumnMap, JudgeConfig  # noqa: E402
from alpagasus_ray.data.schema import DECISION, ID, PROMPT_TOKEN_IDS, REASON, SCORE  # noqa: E402
from alpagasus_ray.demo import synthetic_examples  # noqa: E402
from alpagasus_ray.engines import JudgeEngine, JudgeOutput  # noqa: E402
from alpagasus_ray.engines.hf import HFEngine  # noqa: E402
from alpagasus_ray.filter.stages import DecideStage, PromptStage, ScoreStage, ValidateStage  # noqa: E402
from alpagasus_ray.filter.stages.vllm_score import (  # noqa: E402
    VLLMRequestStage,
    VLLMResultStage,
    build_judge_processor,
    judge_score_tokens,
)


class ReplayEngine(JudgeEngine):
    """Our engine interface answering with given outputs, so both paths see the same ones."""

    def __init__(self, cfg: JudgeConfig, outputs: list[JudgeOutput], score_tokens: dict):
        super().__init__(cfg)
        self.outputs, self._score_tokens = outputs, score_tokens

    @property
    def score_tokens(self) -> dict[int, int]:
        return self._score_tokens

    def judge(self, prompts: Sequence[Sequence[int]], requests=None) -> list[JudgeOutput]:
        assert len(prompts) == len(self.outputs)
        return list(self.outputs)


def vllm_output(prompt_ids: list[int], out: JudgeOutput) -> RequestOutput:
    """The same judge output, as vLLM's engine would return it."""
    logprobs = None
    tokens = [0] * out.num_output_tokens
    if out.logprobs is not None:
        order = sorted(out.logprobs, key=out.logprobs.get, reverse=True)[:20]
        logprobs = []
        append_logprobs_for_next_position(
            logprobs,
            [order[0], *order],
            [out.logprobs[order[0]], *(out.logprobs[t] for t in order)],
            [None] * (len(order) + 1),
            1,
            len(order),
        )
    completion = CompletionOutput(0, out.text or "", tokens, None, logprobs)
    return RequestOutput("0", "", prompt_ids, None, [completion], finished=True)


def through_vllm(ray_session, judge: JudgeConfig, prompted: pa.Table, outs, threshold):
    """Request stage -> Ray's preprocess -> (engine output) -> Ray's postprocess -> result."""
    tokens = judge_score_tokens(judge)
    processor = build_judge_processor(judge, 0.25, tokens)
    requests = VLLMRequestStage(judge, tokens)(prompted).to_pylist()
    rows = []
    for out, request in zip(outs, requests, strict=True):
        data = processor.preprocess(request)["__data"]
        ids = data.pop("tokenized_prompt")
        data.pop("sampling_params")
        dump = vLLMOutputData.from_vllm_engine_output(vllm_output(ids, out)).model_dump()
        data.update(dump, __inference_error__="")
        rows.append(processor.postprocess({"__data": data}))
    table = VLLMResultStage(judge)(pa.Table.from_pylist(rows))
    return DecideStage(threshold)(table)


@pytest.fixture(scope="module")
def prompted(tiny_judge) -> pa.Table:
    rows = synthetic_examples(16, seed=11)
    raw = pa.Table.from_pylist(
        [{k: r[k] for k in ("instruction", "input", "output")} for r in rows]
    )
    validated = ValidateStage(ColumnMap())(raw)
    return PromptStage(JudgeConfig(model=str(tiny_judge)))(validated)


def by_row(table: pa.Table) -> dict[int, dict]:
    """Rows by position (synthetic data repeats examples, so ids are not unique)."""
    return dict(enumerate(table.to_pylist()))


def test_logprobs_mode_same_decisions(ray_session, tiny_judge, prompted):
    engine = HFEngine(JudgeConfig(model=str(tiny_judge)))
    prompts = prompted.column(PROMPT_TOKEN_IDS).to_pylist()
    outs = engine.judge(prompts)
    # Cut-offs in the middle of this model's numbers, so every outcome occurs.
    masses = [sum(math.exp(v) for v in o.logprobs.values()) for o in outs]
    min_mass = statistics.median(masses) * 0.999
    cfg = dict(model=str(tiny_judge), min_score_mass=min_mass)
    hf_judge = JudgeConfig(**cfg)
    scored = ScoreStage(hf_judge, ReplayEngine(hf_judge, outs, engine.score_tokens))(prompted)
    passed = [s for s in scored.column(SCORE).to_pylist() if s is not None]
    threshold = statistics.median(passed)
    hf = by_row(DecideStage(threshold)(scored))
    vl = by_row(
        through_vllm(ray_session, JudgeConfig(engine="vllm", **cfg), prompted, outs, threshold)
    )

    assert [r[ID] for r in hf.values()] == [r[ID] for r in vl.values()] and len(hf) == 16
    assert {r[DECISION] for r in hf.values()} == {"kept", "rejected", "failed"}
    for rid, h in hf.items():
        v = vl[rid]
        assert (v[DECISION], v[REASON]) == (h[DECISION], h[REASON]), rid
        if h[SCORE] is None:
            assert v[SCORE] is None and v["score_probs"] is None
        else:
            assert v[SCORE] == pytest.approx(h[SCORE], abs=1e-6)
            assert v["score_probs"] == pytest.approx(h["score_probs"])
            assert v["score_mass"] == pytest.approx(h["score_mass"])
        assert v["num_output_tokens"] == h["num_output_tokens"] == 1


def test_generate_mode_same_decisions(ray_session, tiny_judge, prompted):
    cfg = dict(model=str(tiny_judge), mode="generate", max_new_tokens=4)
    engine = HFEngine(JudgeConfig(**cfg))
    n = prompted.num_rows
    real = engine.judge(prompted.column(PROMPT_TOKEN_IDS).to_pylist()[:4])
    crafted = ["4.5", "Score: 3", "I would rate it a 5.", "8/10", "**Rating:** 4", "none"]
    outs = real + [
        JudgeOutput(text=crafted[i % len(crafted)], num_output_tokens=3) for i in range(n - 4)
    ]
    hf_judge = JudgeConfig(**cfg)
    scored = ScoreStage(hf_judge, ReplayEngine(hf_judge, outs, engine.score_tokens))(prompted)
    hf = by_row(DecideStage(4.0)(scored))
    vl = by_row(through_vllm(ray_session, JudgeConfig(engine="vllm", **cfg), prompted, outs, 4.0))
    assert {r[DECISION] for r in hf.values()} >= {"kept", "rejected", "failed"}
    for rid, h in hf.items():
        v = vl[rid]
        assert (v[DECISION], v[REASON], v[SCORE]) == (h[DECISION], h[REASON], h[SCORE]), rid
        assert v["judge_text"] == h["judge_text"]
