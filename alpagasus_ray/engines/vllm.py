"""The vLLM judge through Ray's `ray.data.llm`: job config -> processor config, sampling
params and engine kwargs, and the engine stage's raw rows -> `JudgeOutput`.

We use Ray's maintained vLLM stage (batching, async engine, actor pools, TP placement
groups, per-row error capture, engine restarts) rather than an actor of our own over
`vllm.LLM`: it accepts pre-tokenized prompts and returns the log-probabilities of the token
ids asked for, which is all the judge needs. Neither `vllm` nor `ray.data.llm` is imported at
module level, so the HF path never needs them; the engine actor imports vllm when it starts.
"""

from __future__ import annotations

import importlib.util
import math
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.data.schema import TURN_OF, turn_index
from alpagasus_ray.engines.base import JudgeOutput
from alpagasus_ray.engines.judgement import judgement_fields
from alpagasus_ray.engines.parse import score_line_regex
from alpagasus_ray.text.rubrics import PAPER_SCALE, Scale

INSTALL_HINT = "pip install 'alpagasus-ray[vllm]'"
SERVED_NAME_PREFIX = "alpagasus-ray-"


def served_model_name() -> str:
    """A name of its own for one job's replicas (vLLM labels its metrics with it)."""
    return SERVED_NAME_PREFIX + uuid.uuid4().hex[:12]


# What ray.data.llm 2.60's vLLM stage reads from or writes into a row (vLLMOutputData's fields,
# the stage's bookkeeping, its input keys, the processor's own columns). Input columns with
# these names are moved aside before the processor and restored after, so that e.g. a data
# column called `model` is never taken for a LoRA adapter name.
ENGINE_OUTPUT_COLUMNS = frozenset(
    {
        "prompt",
        "prompt_token_ids",
        "num_input_tokens",
        "generated_tokens",
        "generated_text",
        "num_generated_tokens",
        "embeddings",
        "metrics",
        "logprobs",
        "prompt_logprobs",
        "request_id",
        "batch_uuid",
        "time_taken_llm",
        "params",
    }
)
ENGINE_INPUT_COLUMNS = frozenset(
    {
        "tokenized_prompt",
        "sampling_params",
        "pooling_params",
        "model",
        "multimodal_data",
        "mm_processor_kwargs",
        "multimodal_uuids",
        "tokenization_kwargs",
    }
)
ERROR_COLUMN = "__inference_error__"
ENGINE_COLUMNS = ENGINE_OUTPUT_COLUMNS | ENGINE_INPUT_COLUMNS | {ERROR_COLUMN}
RESERVED_COLUMNS = ENGINE_COLUMNS | {"__data", "__idx_in_batch"}


def require_vllm(judge: JudgeConfig, module: str = "vllm") -> None:
    """Fail at job start, not hours later in a GPU actor, when vLLM is missing, or when the
    engine-metrics export would kill every replica (vLLM's Ray metrics wrapper imports Ray
    Serve, which `ray[data,default]` does not install)."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"judge.engine=vllm needs the {module!r} package, which is not installed here. "
            f"Install it with `{INSTALL_HINT}` (in the cluster image, so every GPU node has it)."
        )
    if judge.vllm.log_engine_metrics:
        try:
            import ray.serve  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"judge.vllm.log_engine_metrics needs Ray Serve, which does not import here "
                f"({e}). Install it with `{INSTALL_HINT}` (it brings ray[serve]), or set "
                f"judge.vllm.log_engine_metrics=false (no prefix-cache hit rate then)."
            ) from None


def gpus_per_replica(judge: JudgeConfig) -> int:
    return judge.vllm.tensor_parallel_size * judge.vllm.pipeline_parallel_size


def concurrency(judge: JudgeConfig) -> tuple[int, int]:
    """Replica range for ray.data.llm, whose bare int n means autoscaling 1..n: our int n
    means a fixed pool, so it becomes (n, n)."""
    r = judge.replicas
    return (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))


def sampling_params(judge: JudgeConfig, score_tokens: Iterable[int] = ()) -> dict[str, Any]:
    """Greedy in both modes. Logprobs mode asks for the log-probabilities of exactly the
    score tokens (`logprob_token_ids`), not a top-k: a top-k can miss digits, and a
    distribution renormalised over the few that came back is a wrong score. This gives what
    the HF engine computes, P(token) under the full softmax (vLLM's default logprobs_mode is
    raw_logprobs: before temperature or penalties)."""
    if judge.mode == "logprobs":
        ids = sorted(int(t) for t in score_tokens)
        if not ids:
            raise ValueError("logprobs mode needs the judge tokenizer's score token ids")
        return {"temperature": 0.0, "max_tokens": 1, "logprob_token_ids": ids}
    params: dict[str, Any] = {"temperature": 0.0, "max_tokens": judge.answer_tokens()}
    if judge.stop():
        params["stop"] = judge.stop()  # vLLM leaves the stop string out of the text
    if judge.structured_score:  # Ray's stage builds vLLM's StructuredOutputsParams from it
        params["structured_outputs"] = {"regex": score_line_regex(judge.scale)}
    return params


def engine_kwargs(judge: JudgeConfig, served_name: str | None = None) -> dict[str, Any]:
    """`vllm.AsyncEngineArgs` fields for one replica; `judge.vllm.engine_kwargs` pass through.

    `served_name` labels the replicas' exported metrics, so a job can find its own."""
    v = judge.vllm
    kwargs: dict[str, Any] = {
        "dtype": judge.dtype,
        "trust_remote_code": judge.trust_remote_code,
        "tensor_parallel_size": v.tensor_parallel_size,
        "pipeline_parallel_size": v.pipeline_parallel_size,
        "enable_prefix_caching": v.enable_prefix_caching,
        "gpu_memory_utilization": v.gpu_memory_utilization,
    }
    optional = {
        # The prompt stage quarantines by the same limit, so the two cannot disagree.
        "max_model_len": judge.max_model_len,
        "tokenizer": judge.tokenizer,
        "max_num_batched_tokens": v.max_num_batched_tokens,
        "max_num_seqs": v.max_num_seqs,
        "quantization": v.quantization,
        "served_model_name": served_name,
    }
    kwargs.update({k: val for k, val in optional.items() if val is not None})
    kwargs.update(v.engine_kwargs)
    return kwargs


def placement_group_config(judge: JudgeConfig) -> dict[str, Any] | None:
    """One {GPU: 1, CPU: 1} bundle per TP/PP worker; None (a plain GPU actor) for 1 GPU."""
    if gpus_per_replica(judge) == 1:
        return None
    return {"bundle_per_worker": {"GPU": 1, "CPU": 1}, "strategy": judge.vllm.placement_strategy}


def processor_config(judge: JudgeConfig, served_name: str | None = None) -> Any:
    """The `vLLMEngineProcessorConfig` of a job: the engine stage alone.

    Chat template and tokenization are off because our prompt stage already tokenized with
    the judge tokenizer (and quarantined over-long prompts); detokenization is off because
    the engine already returns the generated text. Errors stay per row.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    v = judge.vllm
    return vLLMEngineProcessorConfig(
        model_source=judge.model,
        engine_kwargs=engine_kwargs(judge, served_name),
        batch_size=judge.batch_size,
        concurrency=concurrency(judge),
        max_concurrent_batches=v.max_concurrent_batches,
        accelerator_type=v.accelerator_type,
        placement_group_config=placement_group_config(judge),
        should_continue_on_error=True,
        log_engine_metrics=v.log_engine_metrics,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )


def build_vllm_processor(
    judge: JudgeConfig,
    task_cpus: float,
    postprocess: Callable[[dict[str, Any]], dict[str, Any]],
    served_name: str | None = None,
) -> Any:
    """Ray's processor over the engine stage alone, for the filter's judge and the
    evaluation's generation alike; only `postprocess` differs. Its pre/postprocess tasks are
    light (`task_cpus`). No vLLM import: it builds the plan only."""
    from ray.data.llm import build_processor

    light = {"num_cpus": task_cpus}
    return build_processor(
        processor_config(judge, served_name),
        postprocess=postprocess,
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
    )


def _logprob_value(info: Any) -> float | None:
    """A logprobs entry as Ray's stage writes it ({logprob, rank, decoded_token}), or a bare
    float / vllm.logprobs.Logprob."""
    raw = info.get("logprob") if isinstance(info, Mapping) else getattr(info, "logprob", info)
    if raw is None:
        return None
    value = float(raw)
    return None if math.isnan(value) else value


def to_judge_output(row: Mapping[str, Any], mode: str) -> JudgeOutput:
    """The engine stage's output row -> the engine-neutral `JudgeOutput`.

    Logprobs mode keeps the first generated position's entries as {token id: logprob}: the
    int-keyed dicts Arrow cannot store stop here, and plain score columns leave.
    """
    error = row.get(ERROR_COLUMN) or None
    n_out = int(row.get("num_generated_tokens") or 0)
    if error:
        return JudgeOutput(error=str(error), num_output_tokens=n_out)
    if mode != "logprobs":
        return JudgeOutput(text=row.get("generated_text") or "", num_output_tokens=n_out)
    positions = row.get("logprobs")
    first = positions[0] if positions is not None and len(positions) else None
    if not first:
        return JudgeOutput(
            error="the engine returned no logprobs for the answer token", num_output_tokens=n_out
        )
    logprobs: dict[int, float] = {}
    for token_id, info in first.items():
        value = _logprob_value(info)
        if value is not None:
            logprobs[int(token_id)] = value
    return JudgeOutput(logprobs=logprobs, num_output_tokens=n_out)


class VLLMPostprocess:
    """ray.data.llm postprocess: raw engine output -> our score columns, by the same
    `judgement_fields` the HF stage uses, so the decision logic exists once.

    Drops every engine column (token ids, logprob dicts, metrics), so no pickled column ever
    reaches Parquet. Rows that failed in the engine never get here: Ray passes them through
    with `__inference_error__` set, and the result stage marks them failed.
    """

    def __init__(
        self,
        mode: str,
        score_tokens: dict[int, int],
        min_score_mass: float,
        scale: Scale = PAPER_SCALE,
        criteria_scales: tuple[Scale, ...] = (),
    ):
        """`criteria_scales`: with `judge.criteria`, each criterion's scale, in order; a
        criterion row (`TURN_OF`: "<row key> <criterion> <criteria>") is read on its own."""
        self.mode = mode
        self.score_tokens = dict(score_tokens)
        self.min_score_mass = min_score_mass
        self.scale = scale
        self.criteria_scales = criteria_scales

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = to_judge_output(row, self.mode)
        kept = {k: v for k, v in row.items() if k not in ENGINE_COLUMNS}
        scale = self.scale
        if self.criteria_scales and row.get(TURN_OF):
            scale = self.criteria_scales[turn_index(row[TURN_OF])]
        fields = judgement_fields(out, self.mode, self.score_tokens, self.min_score_mass, scale)
        kept.update(fields)
        return kept
