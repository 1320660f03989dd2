"""Configuration of the fine-tune stage (`alpagasus-ray train`), in the filter's config style:
strict sections, loadable from YAML with `key.path=value` overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from alpagasus_ray.core.config import InputConfig, RayConfig, StorageConfig, StrictModel
from alpagasus_ray.data.io import join

EXPORT_DIR = "export"


class ModelSpec(StrictModel):
    name: str = Field(..., description="Hub id or path of any AutoModelForCausalLM.")
    tokenizer: str | None = None
    trust_remote_code: bool = False


class LoraSpec(StrictModel):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class TrainData(InputConfig):
    """A filter output (its `kept` partition is read) or Parquet/JSON(L) canonical rows."""

    cache_tokenized: bool = Field(
        True,
        description="Tokenize once into Ray's object store (spilled to disk when large); "
        "false re-reads and re-tokenizes every epoch and needs CPUs beside the workers'.",
    )
    shuffle_buffer: int = Field(1000, ge=0, description="Rows shuffled locally; 0: no shuffle.")
    decisions: list[Literal["kept", "rejected"]] = Field(
        ["kept"],
        min_length=1,
        description="A filter output's partitions to train on: kept (the paper's model), or "
        "kept and rejected (its baseline on every judged row); quarantined and failed rows "
        "never.",
    )
    allow_stand_in_judge: bool = Field(
        False,
        description="Train on a filter output judged by the hash stand-in (judge.engine: "
        "hash), whose kept rows are not rated: only to check a pipeline's wiring.",
    )


class TrainParams(StrictModel):
    """The paper's recipe (Alpaca's): 3 epochs, lr 2e-5, cosine, warmup 3%, batch 128."""

    epochs: int = Field(3, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    global_batch_size: int = Field(128, gt=0)
    per_device_batch_size: int = Field(4, gt=0)
    max_length: int = Field(512, gt=8)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="auto: bf16 on GPU, fp32 on CPU. bf16 trains full weights in fp32 under "
        "bf16 autocast and loads a LoRA run's frozen base in bf16.",
    )
    seed: int = 42
    log_every_steps: int = Field(10, gt=0)
    save_every_steps: int | None = Field(
        None,
        gt=0,
        description="Also checkpoint every N optimizer steps (default: each epoch's end only): "
        "a preempted run resumes from the last one, mid-epoch, on the same rows in the same "
        "order.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass: less activation memory, "
        "one more forward pass of compute.",
    )
    packing: bool = Field(
        False,
        description="Padding-free batches: a batch's rows in one sequence, each attending only "
        "to itself (position ids restart per row); the same rows and steps, no pad tokens.",
    )
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="fsdp shards full fine-tuning.")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters (peft) instead.")


class RunSpec(StrictModel):
    name: str = "alpagasus-sft"
    storage_path: str = Field(..., description="Run storage: local dir or s3://bucket/prefix.")
    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(0, ge=-1, description="Restarts from the latest checkpoint.")
    keep_checkpoints: int = Field(2, gt=0, description="The newest N checkpoints are kept.")
    export_uri: str | None = Field(None, description="Default: <storage_path>/<name>/export.")


class TrainConfig(StrictModel):
    """`alpagasus-ray train`: a filter output (or canonical rows) -> a fine-tuned HF model."""

    data: TrainData
    model: ModelSpec
    train: TrainParams = TrainParams()
    run: RunSpec
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        grad_accumulation(
            self.train.global_batch_size, self.run.num_workers, self.train.per_device_batch_size
        )
        return self

    @model_validator(mode="after")
    def _step_checkpoints_need_a_fixed_order(self) -> TrainConfig:
        """A mid-epoch resume skips the batches already trained on, so each worker must see
        the same rows in the same order again: only the tokenized cache splits them so."""
        if self.train.save_every_steps and not self.data.cache_tokenized:
            raise ValueError(
                "train.save_every_steps needs data.cache_tokenized: true (a resume mid-epoch "
                "must see each worker's rows in the same order)"
            )
        return self

    @model_validator(mode="after")
    def _absolute_local_paths(self) -> TrainConfig:
        """Ray Train workers run in their own directory: relative paths must not reach them."""
        self.data.uri = _absolute(self.data.uri)
        self.run.storage_path = _absolute(self.run.storage_path)
        if self.run.export_uri:
            self.run.export_uri = _absolute(self.run.export_uri)
        for field in ("name", "tokenizer"):  # a hub id stays one; an existing path is made whole
            value = getattr(self.model, field)
            if value and Path(value).exists():
                setattr(self.model, field, str(Path(value).resolve()))
        return self


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def grad_accumulation(global_batch: int, workers: int, per_device: int) -> int:
    """Micro-batches per optimizer step so that workers x per_device x accum = global batch."""
    per_step = workers * per_device
    if global_batch % per_step:
        raise ValueError(
            f"train.global_batch_size {global_batch} is not a multiple of "
            f"run.num_workers x train.per_device_batch_size = {per_step}"
        )
    return global_batch // per_step


def run_dir(cfg: TrainConfig) -> str:
    return join(cfg.run.storage_path, cfg.run.name)


def export_uri(cfg: TrainConfig) -> str:
    return cfg.run.export_uri or join(run_dir(cfg), EXPORT_DIR)
