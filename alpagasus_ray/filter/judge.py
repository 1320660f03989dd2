"""The judge as a step of anyone's Ray Data pipeline: a Dataset of (instruction, input,
response) rows in, the same rows out with the judge's columns, decided against a threshold.

    import ray
    from alpagasus_ray import JudgeConfig, judge_dataset

    ds = ray.data.read_parquet("s3://bucket/sft/")  # ...then the user's own dedup, language id
    judged = judge_dataset(ds, JudgeConfig(model="Qwen/Qwen2.5-7B-Instruct"), threshold=4.5)
    judged.filter(lambda row: row["decision"] == "kept").write_parquet("s3://bucket/kept/")

The filter job (`filter/job.py`) runs exactly these stages after its reader; what it adds
around them is what makes an output a committed, resumable record: the read log, resume,
exact-duplicate settling, the manifest and the report. A row that cannot be judged is
not dropped here either: it comes out `quarantined` (a missing, null, non-string or empty
field) or `failed` (the engine's error), with the reason in `reason` and `reason_detail`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from alpagasus_ray.core.config import ColumnMap, JudgeConfig, RayConfig, StorageConfig
from alpagasus_ray.core.criteria import Rule, check_thresholds
from alpagasus_ray.filter.criteria import criteria_types
from alpagasus_ray.filter.rubric_file import unread, with_rubric_file
from alpagasus_ray.filter.stages import DecideStage, PromptStage, ScoreStage, ValidateStage
from alpagasus_ray.filter.stages.dedup import DedupStage
from alpagasus_ray.filter.stages.skip_done import KnownScoresStage


def _concurrency(value: int | tuple[int, int]) -> int | tuple[int, int]:
    """Ray Data semantics: an int is a fixed pool, a pair an autoscaling (min, max) pool."""
    return value if isinstance(value, int) else tuple(value)


def prompted(ds: Any, judge: JudgeConfig, ray: RayConfig) -> Any:
    """The prompt stage, on its CPU actors where it loads a tokenizer, else in light tasks:
    the job's where the replicas do not build the prompts, and the dry run's (`estimate.py`)."""
    if judge.tokenizer_name() is None:
        stage = PromptStage(judge)
        return ds.map_batches(stage, batch_format="pyarrow", batch_size=judge.batch_size,
                              num_cpus=ray.task_cpus)  # fmt: skip
    return ds.map_batches(
        PromptStage,
        fn_constructor_kwargs={"judge": judge},
        batch_format="pyarrow",
        batch_size=judge.batch_size,
        concurrency=_concurrency(ray.prompt_workers),
        num_cpus=ray.prompt_worker_cpus,
    )


def scored(ds: Any, judge: JudgeConfig, ray: RayConfig, api: Any, served_name: str | None) -> Any:
    """The judge's replicas: vLLM through Ray's LLM processor, the others as an actor pool
    (the HF engine's building their own prompts)."""
    if judge.engine == "vllm":
        from alpagasus_ray.filter.stages.vllm_score import score_with_vllm

        return score_with_vllm(ds, judge, ray.task_cpus, served_name)
    in_replica = judge.prompts_in_replica()
    return ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs={"judge": judge, "api": api, "prompts": in_replica},
        batch_format="pyarrow",
        batch_size=judge.batch_size,
        concurrency=_concurrency(judge.replicas),
        num_gpus=judge.num_gpus_per_replica or None,
        num_cpus=judge.num_cpus_per_replica,
    )


def judge_dataset(
    ds: Any,
    judge: JudgeConfig,
    threshold: float = 4.5,
    columns: ColumnMap | None = None,
    ray: RayConfig | None = None,
    *,
    rule: Rule = "all",
    api: Any = None,
    seen: Any = None,
    known: Any = None,
    progress: Any = None,
    served_name: str | None = None,
    json_columns: Collection[str] = (),
    carried_kinds: Mapping[str, str] | None = None,
) -> Any:
    """Validate, prompt, score and decide the rows of the Ray Dataset `ds`, lazily.

    `columns` names the input's instruction, input and response columns (Alpaca's by
    default); its other columns pass through, one that collides with ours as `orig_<name>`.
    Each row gains `id`, `score` (and, by mode, `score_probs`, `score_mass`, `judge_text`),
    `decision` (kept if score >= `threshold`), `reason`, `reason_detail`, `suspicious` and
    token counts. An API judge gets a rate limit and cost cap of its own unless `api` (an
    `engines.api_budget.JobAPI`) is given. The job's own wiring: `seen` (a
    `filter.duplicates.SeenContent` actor) judges an exact duplicate once, `progress` hears
    of every decided batch, `known` gives a retried row the criteria it had judged already
    (`stages.skip_done.KnownScoresStage`), `served_name` names the vLLM replicas for their
    metrics, and
    `json_columns` are carried as JSON text (their types differ across the input's files),
    and `carried_kinds` are the kinds of a record input's extra keys (`filter/carried.py`).
    With `judge.criteria`, every criterion is judged for each row (`score_<name>`), `score`
    is their mean scaled to 0-1, and `rule` (all, any, mean) decides the row.
    """
    if unread(judge):  # not read by a job (the job reads it with its own storage settings)
        judge = with_rubric_file(judge, StorageConfig())
    check_threshold(judge, threshold, rule)  # the job's config checks the same

    ray = ray or RayConfig()
    if judge.engine == "openai" and api is None:
        from alpagasus_ray.engines.api_budget import job_api

        api = job_api(judge)
    light = ray.task_cpus
    own = criteria_types(judge)
    validate = ValidateStage(columns or ColumnMap(), json_columns, carried_kinds, own)
    ds = ds.map_batches(validate, batch_format="pyarrow", num_cpus=light)
    if known is not None:
        ds = ds.map_batches(KnownScoresStage(known, own), batch_format="pyarrow", num_cpus=light)
    if seen is not None:
        ds = ds.map_batches(DedupStage(seen), batch_format="pyarrow", num_cpus=light)
    if not judge.prompts_in_replica():
        ds = prompted(ds, judge, ray)
    ds = scored(ds, judge, ray, api, served_name)
    decide = DecideStage(threshold, progress, judge, rule)
    return ds.map_batches(decide, batch_format="pyarrow", num_cpus=light)


def check_threshold(judge: JudgeConfig, threshold: float, rule: Rule) -> None:
    """A ValueError where `threshold` (and the criteria's) cannot be met on their scales."""
    if judge.criteria:
        check_thresholds(judge.criteria, rule, threshold)
        return
    lo, hi = judge.scale
    if not lo <= threshold <= hi:
        raise ValueError(
            f"threshold must be between {lo} and {hi} (judge.scale), not {threshold!r}"
        )
