"""The paper's two steps as one job: filter a dataset, then fine-tune on what was kept.

The config is a filter job config with a `finetune` section (a train config without its
`data`): the fine-tune reads the filter's output, so the two can never disagree on where the
kept rows are. One Ray instance serves both steps; the judge's actors are released when the
filter ends, so on a cluster the same GPU nodes can then train.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import model_validator

from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.train.config import TrainConfig

if TYPE_CHECKING:
    from alpagasus_ray.filter.manifest import Manifest

log = logging.getLogger(__name__)


class PipelineConfig(FilterJobConfig):
    """`alpagasus-ray pipeline`: the filter job's sections plus `finetune`."""

    finetune: TrainConfig

    @model_validator(mode="before")
    @classmethod
    def _finetune_reads_the_filter_output(cls, data: Any) -> Any:
        """finetune.data.uri is output.uri; storage and ray are the filter's unless given."""
        if not isinstance(data, dict) or not isinstance(data.get("finetune"), dict):
            return data
        ft = dict(data["finetune"])
        output, ft_data = data.get("output"), ft.get("data") or {}
        out = output.get("uri") if isinstance(output, dict) else None
        if not isinstance(ft_data, dict):
            return data  # validation reports the bad section
        given = ft_data.get("uri")
        if given is not None and given != out:
            raise ValueError(
                f"finetune.data.uri ({given}) must be left unset: the fine-tune reads the "
                f"filter's output ({out}); use `alpagasus-ray train` to train on other data"
            )
        ft["data"] = {**ft_data, "uri": out}
        for section in ("storage", "ray"):
            if section in data and section not in ft:
                ft[section] = data[section]
        return {**data, "finetune": ft}

    @model_validator(mode="after")
    def _no_training_on_the_stand_in(self) -> PipelineConfig:
        """Refused before the filter runs, not after: train would refuse its output."""
        if self.judge.engine == "hash" and not self.finetune.data.allow_stand_in_judge:
            raise ValueError(
                "judge.engine=hash is a stand-in whose scores are not ratings: the fine-tune "
                "would train on a hash's picks (set finetune.data.allow_stand_in_judge=true "
                "to check a pipeline's wiring)"
            )
        return self


def check_enough_rows(
    manifest: Manifest, cfg: PipelineConfig, decisions: Sequence[str] = ("kept",)
) -> None:
    """Too few rows of `decisions` for the training workers stop the job before training."""
    rows = sum(manifest.counts.get(d, 0) for d in decisions)
    if rows < cfg.finetune.run.num_workers:
        said = (
            f"kept {rows}"
            if list(decisions) == ["kept"]
            else f"judged {rows} (" + (" and ".join(decisions) + ")")
        )
        raise ValueError(
            f"the filter {said} of {manifest.rows_read} rows, too few for "
            f"{cfg.finetune.run.num_workers} training workers (filter.threshold is "
            f"{cfg.filter.threshold}); see {cfg.output.uri}/report.md"
        )


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Filter, then train on the kept partition; returns both steps' summaries."""
    from alpagasus_ray.filter.job import run_filter
    from alpagasus_ray.train.job import run_train

    manifest = run_filter(cfg)
    check_enough_rows(manifest, cfg)
    kept, read = manifest.counts["kept"], manifest.rows_read
    log.info("filter kept %d of %d rows; fine-tuning on them", kept, read)
    return {"filter": manifest, "finetune": run_train(cfg.finetune)}
