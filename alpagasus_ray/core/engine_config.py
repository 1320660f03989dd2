"""The engine-specific sections of `judge`: `judge.vllm` and `judge.api`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from alpagasus_ray.core.strict import StrictModel

# Engine kwargs that have their own field: set them there, so the prompt stage's length check,
# the GPU placement and the engine cannot disagree.
_VLLM_OWN_KWARGS = {
    "model": "judge.model",
    "tokenizer": "judge.tokenizer",
    "max_model_len": "judge.max_model_len",
    "dtype": "judge.dtype",
    "trust_remote_code": "judge.trust_remote_code",
    "task_type": "(always 'generate')",
    "tensor_parallel_size": "judge.vllm.tensor_parallel_size",
    "pipeline_parallel_size": "judge.vllm.pipeline_parallel_size",
    "enable_prefix_caching": "judge.vllm.enable_prefix_caching",
    "gpu_memory_utilization": "judge.vllm.gpu_memory_utilization",
    "max_num_batched_tokens": "judge.vllm.max_num_batched_tokens",
    "max_num_seqs": "judge.vllm.max_num_seqs",
    "quantization": "judge.vllm.quantization",
    "served_model_name": "(set by the job, to find its replicas' metrics)",
}


class VLLMConfig(StrictModel):
    """vLLM replicas on GPU actors (`judge.engine: vllm`), run through `ray.data.llm`.

    Model, tokenizer, dtype, max_model_len, batch size and replicas live in `judge` itself,
    shared with the HF engine; this section holds what only vLLM has.
    """

    tensor_parallel_size: int = Field(1, ge=1, description="GPUs a replica shards across.")
    pipeline_parallel_size: int = Field(1, ge=1)
    placement_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="Placement group of a replica's GPUs (tensor/pipeline parallel > 1)."
    )
    accelerator_type: str | None = Field(None, description="e.g. H100, A100, L4; None: any GPU.")
    max_concurrent_batches: int = Field(
        8, ge=1, description="Batches in flight per replica, so the engine queue never drains."
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of the shared prompt head across rows."
    )
    gpu_memory_utilization: float = Field(0.90, gt=0.0, le=1.0)
    max_num_batched_tokens: int | None = Field(None, gt=0, description="None: vLLM's default.")
    max_num_seqs: int | None = Field(None, gt=0, description="None: vLLM's default.")
    quantization: str | None = Field(None, description="e.g. fp8, awq, gptq; None: as stored.")
    log_engine_metrics: bool = Field(
        True,
        description="Export vLLM metrics (prefix-cache hits, KV use) to Ray's Prometheus; "
        "the manifest's prefix-cache hit rate is read from there. Needs ray[serve].",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Any other vllm.EngineArgs field, passed through."
    )

    @field_validator("engine_kwargs")
    @classmethod
    def _check_engine_kwargs(cls, v: dict[str, Any]) -> dict[str, Any]:
        own = sorted(k for k in v if k in _VLLM_OWN_KWARGS)
        if own:
            where = ", ".join(f"{k} -> {_VLLM_OWN_KWARGS[k]}" for k in own)
            raise ValueError(f"set these through their own fields, not engine_kwargs: {where}")
        return v


class APIConfig(StrictModel):
    """An OpenAI-compatible endpoint (`judge.engine: openai`): a vLLM server, Ray Serve LLM,
    a hosted provider. The limits are shared by every replica of the job."""

    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Environment variable holding the key; null: no key."
    )
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="chat: /chat/completions (messages); completions: /completions."
    )
    max_concurrency: int = Field(32, ge=1, description="Requests in flight per replica.")
    requests_per_minute: float | None = Field(None, gt=0, description="For the whole job.")
    tokens_per_minute: float | None = Field(
        None, gt=0, description="Prompt + max answer tokens, for the whole job."
    )
    max_retries: int = Field(6, ge=0, description="On 429, 5xx, timeouts, lost connections.")
    timeout_s: float = Field(120.0, gt=0, description="One request's time limit.")
    top_logprobs: int = Field(20, ge=1, le=20, description="Logprobs mode: top-k returned.")
    breaker_window: int = Field(50, ge=1, description="Recent requests the breaker looks at.")
    breaker_failure_rate: float = Field(
        0.9, gt=0.0, le=1.0, description="Stop the job when this share of them failed."
    )
    price_input_per_mtok: float = Field(0.0, ge=0, description="Price per 1M prompt tokens.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="Price per 1M answer tokens.")
    max_cost: float | None = Field(None, gt=0, description="Stop before spending more.")

    def cost(self, prompt_tokens: int, output_tokens: int) -> float:
        return (
            prompt_tokens * self.price_input_per_mtok + output_tokens * self.price_output_per_mtok
        ) / 1e6
