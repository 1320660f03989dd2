"""judge.engine=vllm: job config -> ray.data.llm processor, checked as data (no GPU, no vLLM
engine start: building a processor only plans Ray Data stages)."""

from __future__ import annotations

import functools

import pyarrow as pa
import pytest

from alpagasus_ray.core.config import SCORE_LINE_TOKENS, ConfigError, JudgeConfig, build_config
from alpagasus_ray.data.schema import NUM_OUTPUT_TOKENS, NUM_PROMPT_TOKENS
from alpagasus_ray.engines.vllm import (
    INSTALL_HINT,
    concurrency,
    engine_kwargs,
    placement_group_config,
    require_vllm,
    sampling_params,
)
from alpagasus_ray.engines.vllm_metrics import PrefixCacheReading, parse_prefix_cache
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.metrics import PREFIX_CACHE_NOT_READ, engine_metrics
from alpagasus_ray.filter.stages.vllm_score import build_judge_processor, judge_score_tokens


def judge(model: str = "meta-llama/Llama-3.1-8B-Instruct", **kw) -> JudgeConfig:
    return JudgeConfig(model=model, engine="vllm", **kw)


def engine_stage(processor):
    """The processor must hold Ray's vLLM engine stage and nothing else."""
    assert processor.list_stage_names() == ["vLLMEngineStage"]
    return processor.get_stage_by_name("vLLMEngineStage")


def test_defaults_say_what_they_mean():
    j = judge()
    assert j.vllm.enable_prefix_caching is True
    assert concurrency(j) == (1, 1)
    kw = engine_kwargs(j)
    assert kw["enable_prefix_caching"] is True
    assert kw["tensor_parallel_size"] == 1 and kw["pipeline_parallel_size"] == 1
    assert kw["gpu_memory_utilization"] == pytest.approx(0.90)
    assert kw["dtype"] == "auto"
    assert "max_model_len" not in kw  # None: the model's own, like the prompt stage's
    assert placement_group_config(j) is None


def test_replicas_fixed_int_is_not_ray_autoscaling_int():
    # ray.data.llm reads a bare int n as autoscaling 1..n; our int n is a fixed pool.
    assert concurrency(judge(replicas=4)) == (4, 4)
    assert concurrency(judge(replicas=(2, 8))) == (2, 8)
    with pytest.raises(ValueError):
        judge(replicas=(3, 2))


def test_sampling_params_per_mode():
    # Logprobs mode asks for exactly the score tokens, never a top-k that could miss one.
    tokens = {15: 0, 16: 1, 17: 2, 18: 3, 19: 4, 20: 5, 220: 4}
    params = sampling_params(judge(), tokens)
    assert params == {"temperature": 0.0, "max_tokens": 1, "logprob_token_ids": sorted(tokens)}
    with pytest.raises(ValueError, match="score token"):
        sampling_params(judge())
    gen = sampling_params(judge(mode="generate"))
    assert gen == {"temperature": 0.0, "max_tokens": 256}
    short = sampling_params(judge(mode="generate", stop_after_score_line=True))
    assert short == {"temperature": 0.0, "max_tokens": SCORE_LINE_TOKENS, "stop": ["\n"]}
    with pytest.raises(ValueError):
        judge(vllm={"top_logprobs": 20})  # gone: the digits are asked for by id


def test_engine_kwargs_pass_through_and_own_fields_win():
    j = judge(
        max_model_len=4096,
        dtype="bfloat16",
        tokenizer="meta-llama/Llama-3.1-8B-Instruct",
        vllm={
            "max_num_batched_tokens": 16384,
            "max_num_seqs": 256,
            "quantization": "fp8",
            "enable_prefix_caching": False,
            "engine_kwargs": {"enforce_eager": True, "kv_cache_dtype": "fp8"},
        },
    )
    kw = engine_kwargs(j)
    assert kw["max_model_len"] == 4096 and kw["dtype"] == "bfloat16"
    assert kw["max_num_batched_tokens"] == 16384 and kw["max_num_seqs"] == 256
    assert kw["quantization"] == "fp8" and kw["enable_prefix_caching"] is False
    assert kw["enforce_eager"] is True and kw["kv_cache_dtype"] == "fp8"
    assert kw["tokenizer"] == "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize("key", ["tensor_parallel_size", "max_model_len", "model", "dtype"])
def test_engine_kwargs_may_not_shadow_own_fields(key):
    data = {
        "input": {"uri": "x.jsonl"},
        "output": {"uri": "out"},
        "judge": {"model": "m", "engine": "vllm", "vllm": {"engine_kwargs": {key: 1}}},
    }
    with pytest.raises(ConfigError, match=f"judge.vllm.engine_kwargs.*{key}"):
        build_config(FilterJobConfig, data)


def test_gpus_per_replica_must_match_parallelism():
    with pytest.raises(ValueError, match="tensor_parallel_size x pipeline_parallel_size = 2"):
        judge(num_gpus_per_replica=1, vllm={"tensor_parallel_size": 2})
    judge(num_gpus_per_replica=2, vllm={"tensor_parallel_size": 2})  # consistent: fine
    # The HF engine keeps its own meaning of the field.
    JudgeConfig(model="m", num_gpus_per_replica=1, vllm={"tensor_parallel_size": 2})


def test_missing_vllm_says_how_to_install():
    with pytest.raises(ImportError, match="alpagasus-ray\\[vllm\\]") as err:
        require_vllm(judge(), "vllm_is_not_installed_here")
    assert INSTALL_HINT in str(err.value)


def test_engine_metrics_export_needs_ray_serve():
    """vLLM's Ray metrics wrapper imports Ray Serve; without it every replica dies. The main
    test environment has vllm but not ray[serve]: refused at start, with both ways out."""
    pytest.importorskip("vllm")
    try:
        import ray.serve  # noqa: F401

        pytest.skip("ray[serve] is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="log_engine_metrics") as err:
        require_vllm(judge())
    assert INSTALL_HINT in str(err.value) and "log_engine_metrics=false" in str(err.value)
    require_vllm(judge(vllm={"log_engine_metrics": False}))  # no export: nothing to import


def test_single_gpu_replicas_as_processor_data(ray_session, tiny_judge):
    j = judge(
        model=str(tiny_judge),
        replicas=(2, 6),
        batch_size=48,
        vllm={"accelerator_type": "L4", "max_concurrent_batches": 4},
    )
    processor = build_judge_processor(j, 0.25, judge_score_tokens(j))
    cfg = processor.config
    assert cfg.should_continue_on_error is True
    assert cfg.model_source == str(tiny_judge) and cfg.batch_size == 48
    stage = engine_stage(processor)
    mb = stage.map_batches_kwargs
    assert (mb["compute"].min_size, mb["compute"].max_size) == (2, 6)
    assert mb["num_gpus"] == 1 and "ray_remote_args_fn" not in mb
    assert mb["accelerator_type"] == "L4"
    assert mb["max_concurrency"] == 4
    ekw = stage.fn_constructor_kwargs["engine_kwargs"]
    assert ekw["distributed_executor_backend"] == "uni"
    assert ekw["enable_prefix_caching"] is True and ekw["task_type"] == "generate"
    # Our prompt stage tokenizes: the engine stage must read the token ids we give it.
    assert "tokenized_prompt" in stage.get_optional_input_keys()
    assert set(stage.get_required_input_keys()) == {"sampling_params"}
    # Light CPU tasks for Ray's pre/postprocess maps.
    assert processor.postprocess_map_kwargs == {"num_cpus": 0.25}


def test_fixed_replicas_and_tensor_parallel_placement(ray_session, tiny_judge):
    j = judge(
        model=str(tiny_judge),
        replicas=3,
        vllm={"tensor_parallel_size": 4, "placement_strategy": "STRICT_PACK"},
    )
    stage = engine_stage(build_judge_processor(j, 0.25, judge_score_tokens(j)))
    mb = stage.map_batches_kwargs
    assert (mb["compute"].min_size, mb["compute"].max_size) == (3, 3)
    # TP > 1: the actor itself asks for no GPU; its placement group holds one per worker.
    assert mb["num_gpus"] == 0
    fn = mb["ray_remote_args_fn"]
    assert isinstance(fn, functools.partial)
    num_bundles, accelerator, pg = fn.args
    assert num_bundles == 4 and accelerator is None
    assert pg["bundles"] == [{"GPU": 1.0, "CPU": 1.0}] * 4
    assert pg["strategy"] == "STRICT_PACK"
    ekw = stage.fn_constructor_kwargs["engine_kwargs"]
    assert ekw["tensor_parallel_size"] == 4 and ekw["distributed_executor_backend"] == "ray"


def test_engine_metrics_from_output_columns():
    table = pa.table(
        {
            NUM_PROMPT_TOKENS: pa.array([100, 200, 5000, 150], pa.int32()),
            # The third row was quarantined before the engine: no output-token count.
            NUM_OUTPUT_TOKENS: pa.array([1, 1, None, 0], pa.int32()),
        }
    )
    m = engine_metrics(table, 2.0, judge())
    assert m["examples_judged"] == 3
    assert m["input_tokens"] == 450 and m["output_tokens"] == 2
    assert m["examples_per_s"] == 1.5 and m["input_tokens_per_s"] == 225.0
    assert m["prefix_cache_hit_rate"] is None
    assert m["prefix_cache_note"] == PREFIX_CACHE_NOT_READ
    assert m["gpus_per_replica"] == 1
    replicas = [{"replica": "a", "hits": 30.0, "queries": 100.0, "hit_rate": 0.3}]
    read = engine_metrics(table, 2.0, judge(), PrefixCacheReading(30.0, 100.0, replicas))
    assert read["prefix_cache_hit_rate"] == 0.3 and read["prefix_cache_replicas"] == replicas
    assert (read["prefix_cache_hit_tokens"], read["prefix_cache_query_tokens"]) == (30, 100)
    hf = engine_metrics(table, 0.0, JudgeConfig(model="m"))
    assert hf["examples_per_s"] is None and "not applicable" in hf["prefix_cache_note"]


def test_manifest_reports_engine_metrics(ray_session, tiny_judge, tmp_path):
    """The job's manifest carries the engine metrics, computed from what was written."""
    from conftest import job_config
    from helpers import write_jsonl

    from alpagasus_ray.demo import synthetic_examples
    from alpagasus_ray.filter.job import run_filter

    rows = synthetic_examples(6, seed=5) + [{"instruction": "", "output": "x"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    manifest = run_filter(job_config(str(src), str(tmp_path / "out"), tiny_judge))
    m = manifest.engine_metrics
    assert m["engine"] == "hf" and m["examples_judged"] == 6  # the empty one is quarantined
    assert m["input_tokens"] > 6 * 50 and m["output_tokens"] == 6
    assert m["examples_per_s"] > 0 and m["prefix_cache_hit_rate"] is None


# Two replicas of this job and one of another, as Ray's metrics agent exports them.
PROMETHEUS_TEXT = """\
# HELP ray_vllm_prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE ray_vllm_prefix_cache_hits_total counter
ray_vllm_prefix_cache_hits_total{Component="core_worker",ReplicaId="",WorkerId="aaaa1111bbbb2222",engine="0",model_name="job-1"} 8064.0
ray_vllm_prefix_cache_hits_total{Component="core_worker",ReplicaId="",WorkerId="cccc3333dddd4444",engine="0",model_name="job-1"} 100.0
ray_vllm_prefix_cache_hits_total{Component="core_worker",ReplicaId="",WorkerId="eeee5555ffff6666",engine="0",model_name="job-0"} 999.0
# HELP ray_vllm_prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE ray_vllm_prefix_cache_queries_total counter
ray_vllm_prefix_cache_queries_total{Component="core_worker",ReplicaId="",WorkerId="aaaa1111bbbb2222",engine="0",model_name="job-1"} 11027.0
ray_vllm_prefix_cache_queries_total{Component="core_worker",ReplicaId="",WorkerId="cccc3333dddd4444",engine="0",model_name="job-1"} 400.0
ray_vllm_prefix_cache_queries_total{Component="core_worker",ReplicaId="",WorkerId="eeee5555ffff6666",engine="0",model_name="job-0"} 1000.0
"""  # noqa: E501


def test_prefix_cache_counters_of_this_jobs_replicas_only():
    series = parse_prefix_cache(PROMETHEUS_TEXT, "job-1", "10.0.0.5")
    assert series == {
        ("10.0.0.5", "aaaa1111bbbb2222", "0"): {"hits": 8064.0, "queries": 11027.0},
        ("10.0.0.5", "cccc3333dddd4444", "0"): {"hits": 100.0, "queries": 400.0},
    }
    assert parse_prefix_cache(PROMETHEUS_TEXT, "job-2", "10.0.0.5") == {}


def test_metrics_of_the_drivers_own_node_are_read_on_loopback(ray_session):
    from alpagasus_ray.engines.vllm_metrics import metrics_endpoints

    endpoints = metrics_endpoints()
    assert len(endpoints) == 1  # the one local node
    node, url = endpoints[0]
    assert node == ray_session.util.get_node_ip_address()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
