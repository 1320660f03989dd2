"""What each Ray Train worker runs: transformers' `Trainer` on this worker's shard of the
tokenized rows. Ray Train owns the processes, the process group, the run's storage and
restarts; `Trainer` owns the step (accumulation, clipping, schedule, mixed precision, DDP or
FSDP, gradient checkpointing) and the checkpoint's contents (weights, optimizer, scheduler,
RNG and progress), so a resume mid-epoch restores all of it and skips the batches already
trained on.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainingArguments

from alpagasus_ray.data.io import filesystem
from alpagasus_ray.train.config import TrainConfig, export_uri, grad_accumulation
from alpagasus_ray.train.reporting import RunReporter


def use_bf16(cfg: TrainConfig) -> bool:
    t = cfg.train
    return t.precision == "bf16" or (t.precision == "auto" and cfg.run.use_gpu)


def build_model(cfg: TrainConfig, dtype: Any = torch.float32) -> Any:
    """The model in `dtype`, LoRA-wrapped when configured (adapters stay fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.name, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code
    )
    if cfg.train.lora:
        from peft import LoraConfig, get_peft_model

        lora = cfg.train.lora
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model


def load_dtype(cfg: TrainConfig) -> Any:
    """Full fine-tuning keeps fp32 weights (bf16 is autocast: the optimizer's updates at lr
    2e-5 vanish in bf16); a LoRA run's frozen base is never updated, so it loads in bf16."""
    return torch.bfloat16 if use_bf16(cfg) and cfg.train.lora else torch.float32


def fsdp_settings(cfg: TrainConfig) -> dict[str, Any]:
    """FSDP units per decoder layer; sharded checkpoints (no whole gather to rank 0); weights
    read on rank 0 only and broadcast, so no worker holds a second full copy."""
    if cfg.train.strategy != "fsdp":
        return {}
    from transformers import AutoConfig

    arch = AutoConfig.from_pretrained(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "transformer_layer_cls_to_wrap": _layer_classes(arch, cfg.model.trust_remote_code),
            "use_orig_params": True,
            "state_dict_type": "SHARDED_STATE_DICT",
            "cpu_ram_efficient_loading": True,
            "sync_module_states": True,
        },
    }


def _layer_classes(arch: Any, trust_remote_code: bool) -> list[str] | None:
    """The decoder layer's class names, from a weightless (meta) copy of the model."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(arch, trust_remote_code=trust_remote_code)
    return list(getattr(model, "_no_split_modules", None) or []) or None


def training_arguments(cfg: TrainConfig, output_dir: str, world: int) -> TrainingArguments:
    """The paper's recipe in `Trainer`'s terms. Saving is the `RunReporter`'s decision."""
    t = cfg.train
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=grad_accumulation(
            t.global_batch_size, world, t.per_device_batch_size
        ),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # under 1: a fraction of all steps, rounded up
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=use_bf16(cfg),
        use_cpu=not cfg.run.use_gpu,
        seed=t.seed,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_strategy="steps",
        logging_steps=1,  # every step's loss reaches the reporter, which keeps its own rows
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_level="warning",
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=False,
        **fsdp_settings(cfg),
    )


class ShardBatches(IterableDataset):
    """One worker's shard as padded batches, with the length `Trainer` needs to count epochs
    and to skip, on a resume, the batches it already trained on. The local shuffle is seeded
    per epoch, so an epoch's order is the same in every run."""

    def __init__(self, shard: Any, batches: int, cfg: TrainConfig, pad_token_id: int):
        from alpagasus_ray.train.data import PackCollate, PadCollate

        self.shard, self.batches, self.epoch = shard, batches, 0
        self.batch_size = cfg.train.per_device_batch_size
        self.buffer, self.seed = cfg.data.shuffle_buffer, cfg.train.seed
        self.collate = PackCollate() if cfg.train.packing else PadCollate(pad_token_id)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Any:
        return iter(
            self.shard.iter_torch_batches(
                batch_size=self.batch_size,
                collate_fn=self.collate,
                local_shuffle_buffer_size=self.buffer or None,
                local_shuffle_seed=self.seed + self.epoch if self.buffer else None,
            )
        )


class SftTrainer(Trainer):
    """`Trainer` reading Ray Data batches as they come (Ray already split the rows between
    workers: Accelerate must not split them again), and counting each batch's tokens."""

    def __init__(self, *args: Any, batches: ShardBatches, on_batch: Any, **kwargs: Any):
        super().__init__(*args, train_dataset=batches, **kwargs)
        self.on_batch = on_batch

    def get_train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_dataset, batch_size=None)

    def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        from alpagasus_ray.train.data import ATTENTION_MASK, INPUT_IDS, ROWS

        if ROWS in inputs:  # packed: one sequence of `rows` rows, no padding
            rows, tokens = inputs.pop(ROWS), inputs[INPUT_IDS].numel()
            self.on_batch(tokens, int(rows), tokens)
        else:
            mask = inputs[ATTENTION_MASK]
            self.on_batch(int(mask.sum()), len(mask), mask.numel())
        return super().compute_loss(model, inputs, *args, **kwargs)


def batches_per_epoch(examples: int, world: int, per_device: int) -> int:
    """Each worker's equal share of the rows (Ray drops the remainder), in batches."""
    return math.ceil(examples // world / per_device)


def train_worker(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: resume from Ray's latest checkpoint, train, export."""
    import ray.train
    from transformers import PrinterCallback, set_seed

    from alpagasus_ray.text.models import load_tokenizer

    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    set_seed(cfg.train.seed)  # LoRA's initial adapters too
    # As many compute threads as the CPUs the worker holds, whatever imported torch first:
    # more would crowd the other workers, and the thread count changes float sums.
    torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    # The arguments come first: under FSDP they tell `from_pretrained` to load on rank 0 only.
    args = training_arguments(cfg, tempfile.mkdtemp(prefix="alpagasus-sft-"), world)
    tok = load_tokenizer(
        cfg.model.tokenizer or cfg.model.name, cfg.model.trust_remote_code, "right"
    )
    model = build_model(cfg, load_dtype(cfg))
    per_epoch = batches_per_epoch(config["examples"], world, cfg.train.per_device_batch_size)
    shard = ray.train.get_dataset_shard(config["dataset"].format(rank=rank))
    batches = ShardBatches(shard, per_epoch, cfg, tok.pad_token_id)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as resume:
        steps = math.ceil(per_epoch / args.gradient_accumulation_steps) * cfg.train.epochs
        reporter = RunReporter(cfg, batches, resume, steps, config["skipped_rows"])
        trainer = SftTrainer(
            model=model,
            args=args,
            processing_class=tok,
            batches=batches,
            on_batch=reporter.add_batch,
            callbacks=[reporter],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train(resume_from_checkpoint=resume)
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # collective under FSDP
    if rank == 0:
        export(cfg, state, tok)


def export(cfg: TrainConfig, state: dict[str, Any], tokenizer: Any) -> None:
    """Hugging Face format (LoRA merged in) that transformers and vLLM load as they are."""
    model = build_model(cfg)
    model.load_state_dict(state, strict=not cfg.train.lora)
    if cfg.train.lora:
        model = model.merge_and_unload()
    if use_bf16(cfg):
        model = model.to(torch.bfloat16)
    fs, dest = filesystem(export_uri(cfg), cfg.storage)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        if fs.exists(dest):
            fs.rm(dest, recursive=True)
        fs.makedirs(dest, exist_ok=True)
        fs.put(d.rstrip("/") + "/", dest, recursive=True)
