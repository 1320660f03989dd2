"""Configuration of `alpagasus-ray experiment`: the pipeline's sections (filter, then
`finetune`) plus `experiment` (the folder every step writes in) and `evaluation` (how the two
trained models, and any others, are compared).

The experiment lays its steps out itself, so that a rerun finds each one where it left it:

    <experiment.uri>/filter/        the filter output (output.uri, unless given)
    <experiment.uri>/train/kept/    the model trained on the kept rows, its export/ inside
    <experiment.uri>/train/all/     the same recipe on every judged row (kept and rejected)
    <experiment.uri>/evaluation/    the pairwise evaluation
    <experiment.uri>/experiment.md  the report (experiment.json, written last)
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from alpagasus_ray.core.config import OutputConfig, StrictModel
from alpagasus_ray.data.io import join
from alpagasus_ray.evaluate.config import EvalConfig, EvalSettings, ModelSpec
from alpagasus_ray.pipeline import PipelineConfig
from alpagasus_ray.train.config import TrainConfig, export_uri

# The two models of the paper's comparison, by the rows they are trained on.
MODELS: dict[str, list[str]] = {"kept": ["kept"], "all": ["kept", "rejected"]}
FILTER_DIR, TRAIN_DIR, EVALUATION_DIR = "filter", "train", "evaluation"


class ExperimentSpec(StrictModel):
    """Where the experiment writes: a local folder (shared between the nodes of a cluster),
    since the evaluation loads the trained models from their export folders."""

    uri: str = Field(..., description="The experiment's folder; each step writes inside it.")
    note: str | None = Field(None, description="A line experiment.md opens with: what it is.")

    @field_validator("uri")
    @classmethod
    def _local(cls, v: str) -> str:
        if "://" in v and not v.startswith("file://"):
            raise ValueError(
                f"{v}: the experiment needs a local or shared folder (its models are loaded "
                "from their export folders); put its filter output on S3 with output.uri"
            )
        return v.removeprefix("file://").rstrip("/") or "/"


class ExperimentEvaluation(EvalSettings):
    """The evaluation's settings; its models are the two trained ones plus `models`."""

    models: list[ModelSpec] = Field(
        default_factory=list,
        description="Models compared beside the two trained ones (kept, all): the base "
        "model, an API model.",
    )
    pairs: list[tuple[str, str]] | None = Field(
        None, description="Default: [kept, all], then [kept, M] for each model M listed."
    )


class ExperimentConfig(PipelineConfig):
    """`alpagasus-ray experiment`: filter, train on kept and on all rows, judge pairwise."""

    experiment: ExperimentSpec
    evaluation: ExperimentEvaluation

    @model_validator(mode="before")
    @classmethod
    def _lay_out_the_steps(cls, data: Any) -> Any:
        """The filter output and the training runs go inside experiment.uri (the pipeline's
        own validator, which runs after this one, then points the fine-tune at the output)."""
        if not isinstance(data, dict) or not isinstance(data.get("experiment"), dict):
            return data
        root = data["experiment"].get("uri")
        if not isinstance(root, str):
            return data  # validation reports it
        output = data.get("output") or {}
        if isinstance(output, dict):
            data = {**data, "output": {"uri": join(root, FILTER_DIR), **output}}
        ft = data.get("finetune")
        run = (ft.get("run") or {}) if isinstance(ft, dict) else None
        if isinstance(run, dict):
            for key in ("storage_path", "export_uri", "name"):
                if key in run:
                    raise ValueError(
                        f"finetune.run.{key} must be left unset: the experiment trains its two "
                        f"models in {join(root, TRAIN_DIR)}/<kept|all>"
                    )
            ft = {**ft, "run": {**run, "storage_path": join(root, TRAIN_DIR)}}
            data = {**data, "finetune": ft}
        return data

    @model_validator(mode="after")
    def _check_steps(self) -> ExperimentConfig:
        if self.output.overwrite:
            raise ValueError(
                "output.overwrite: the experiment's rerun never redoes a finished step (it "
                f"would judge every row again); remove {self.output.uri} to filter again"
            )
        if self.input.columns.messages:
            raise ValueError(
                "input.columns.messages: an experiment on conversation rows is not "
                "supported yet (its evaluation asks the Alpaca prompt); run filter, train "
                "(which takes them) and evaluate (with each model's template: chat) instead"
            )
        if self.evaluation.generation.engine == "openai":
            raise ValueError(
                "evaluation.generation.engine: the trained models answer on a local engine "
                "(hf or vllm); give an API model its own engine and api under "
                "evaluation.models"
            )
        self.eval_config()  # its names and pairs, checked now rather than after training
        return self

    def train_config(self, model: str) -> TrainConfig:
        """The fine-tune of one of the two models: the same recipe, seed and workers, on the
        filter output's partitions that model is trained on."""
        ft = self.finetune
        return ft.model_copy(
            update={
                "data": ft.data.model_copy(update={"decisions": MODELS[model]}),
                "run": ft.run.model_copy(update={"name": model}),
            }
        )

    def eval_config(self, overwrite: bool = False) -> EvalConfig:
        """The evaluation of the two trained models (and any others listed)."""
        ev = self.evaluation
        trained = [ModelSpec(name=m, path=export_uri(self.train_config(m))) for m in MODELS]
        others = [m.name for m in ev.models]
        pairs = ev.pairs or [("kept", "all"), *(("kept", m) for m in others)]
        settings = {f: getattr(ev, f) for f in EvalSettings.model_fields}
        return EvalConfig(
            **settings,
            models=[*trained, *ev.models],
            pairs=pairs,
            output=OutputConfig(uri=join(self.experiment.uri, EVALUATION_DIR), overwrite=overwrite),
            ray=self.ray,
            storage=self.storage,
        )
