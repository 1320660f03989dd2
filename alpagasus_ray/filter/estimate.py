"""`alpagasus-ray filter --dry-run`: what a job would send to its judge, before any call.

The input is read and every row validated, checked for exact duplicates and prompted exactly
as the job would (the same stages), then counted: rows, the rows that would reach the judge
(not the quarantined, not the copies of a content seen before), their prompt tokens (with
the judge's tokenizer; for an API judge without `judge.tokenizer`, estimated from the text
at 4 characters a token, and said so), the answer tokens at most, and the cost at the
`judge.api` prices. Nothing is written and the judge is not called or loaded. It counts as
for a fresh output: a rerun that resumes an unfinished one judges only the rows it lacks.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from alpagasus_ray.data.schema import DECISION, NUM_PROMPT_TOKENS
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.duplicates import SeenContent
from alpagasus_ray.filter.stages.common import row_prompts
from alpagasus_ray.filter.stages.dedup import DUPLICATE, DedupStage


def count_batch(table: pa.Table) -> pa.Table:
    """One row of counts per batch, so the driver only sums a few numbers per block."""
    from alpagasus_ray.engines.api import estimate_tokens

    pending = pc.fill_null(pc.is_null(table.column(DECISION)), False)
    todo = table.filter(pending)
    counted = int(pc.sum(todo.column(NUM_PROMPT_TOKENS)).as_py() or 0)
    estimated, requests = 0, 0
    n_tokens = todo.column(NUM_PROMPT_TOKENS).to_pylist()
    _, each_requests, _ = row_prompts(todo, list(range(todo.num_rows)))
    for n, row_requests in zip(n_tokens, each_requests, strict=True):
        requests += len(row_requests)
        if n is None:
            for req in filter(None, row_requests):
                r = json.loads(req)
                estimated += estimate_tokens(r.get("messages"), r.get("prompt"))
    copies = pc.sum(pc.fill_null(pc.equal(table.column(DECISION), DUPLICATE), False))
    counts = {
        "rows": table.num_rows,
        "to_judge": todo.num_rows,
        "requests": requests,
        "duplicates": int(copies.as_py() or 0),
        "counted_tokens": counted,
        "estimated_tokens": estimated,
    }
    return pa.table({k: [v] for k, v in counts.items()})


def estimate(cfg: FilterJobConfig) -> dict[str, Any]:
    import ray

    from alpagasus_ray.core.runtime import init_ray
    from alpagasus_ray.data.read import read_input
    from alpagasus_ray.filter.judge import prompted
    from alpagasus_ray.filter.preflight import preflight
    from alpagasus_ray.filter.rubric_file import with_rubric_file
    from alpagasus_ray.filter.stages import ValidateStage

    cfg = cfg.model_copy(update={"judge": with_rubric_file(cfg.judge, cfg.storage)})
    listing = preflight(cfg, dry_run=True)
    init_ray(cfg.ray)
    judge, light = cfg.judge, cfg.ray.task_cpus
    rows_per_block = cfg.input.rows_per_block or judge.batch_size
    ds = read_input(cfg.input, cfg.storage, light, rows_per_block, None, listing)
    ds = ds.map_batches(ValidateStage(cfg.input.columns), batch_format="pyarrow", num_cpus=light)
    seen = ray.remote(num_cpus=0)(SeenContent).remote()
    ds = ds.map_batches(DedupStage(seen), batch_format="pyarrow", num_cpus=light)
    ds = prompted(ds, cfg.judge, cfg.ray)
    ds = ds.map_batches(count_batch, batch_format="pyarrow", num_cpus=light)
    totals = dict.fromkeys(
        ("rows", "to_judge", "requests", "duplicates", "counted_tokens", "estimated_tokens"), 0
    )
    for row in ds.iter_rows():
        for k in totals:
            totals[k] += row[k]
    prompt_tokens = totals["counted_tokens"] + totals["estimated_tokens"]
    per_row = judge.answer_tokens()
    answer_tokens = totals["requests"] * per_row
    cost = judge.api.cost(prompt_tokens, answer_tokens) if judge.engine == "openai" else None
    return {
        "rows_read": totals["rows"],
        "rows_to_judge": totals["to_judge"],
        "requests": totals["requests"],
        "rows_quarantined": totals["rows"] - totals["to_judge"] - totals["duplicates"],
        "duplicates": totals["duplicates"],
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_estimated": totals["estimated_tokens"],
        "answer_tokens_at_most": answer_tokens,
        "expected_cost_at_most": cost,
        "max_cost": judge.api.max_cost if judge.engine == "openai" else None,
    }


def render(e: dict[str, Any], cfg: FilterJobConfig) -> str:
    """The dry run's few lines for the console."""
    judge = cfg.judge
    how = (
        f"of which {e['prompt_tokens_estimated']:,} estimated at 4 characters a token (no "
        "judge.tokenizer)"
        if e["prompt_tokens_estimated"]
        else "counted with the judge's tokenizer"
    )
    per = (
        "a row" if e["requests"] == e["rows_to_judge"] else f"a request; {e['requests']:,} requests"
    )
    per_row = f"1 {per}" if judge.mode == "logprobs" else f"up to {judge.answer_tokens()} {per}"
    lines = [
        "dry run: nothing was sent to the judge and nothing was written",
        f"rows read        {e['rows_read']:,}",
        f"rows to judge    {e['rows_to_judge']:,} (quarantined before the judge: "
        f"{e['rows_quarantined']:,}; copies of a row judged once: {e['duplicates']:,})",
        f"prompt tokens    {e['prompt_tokens']:,} ({how})",
        f"answer tokens    at most {e['answer_tokens_at_most']:,} ({judge.mode}: {per_row})",
    ]
    if e["expected_cost_at_most"] is not None:
        api = judge.api
        cap = f"; judge.api.max_cost {api.max_cost:g}" if api.max_cost else ""
        lines.append(
            f"expected cost    at most {e['expected_cost_at_most']:.4f} (prices per 1M tokens: "
            f"prompt {api.price_input_per_mtok:g}, answer {api.price_output_per_mtok:g}{cap})"
        )
    return "\n".join(lines)
