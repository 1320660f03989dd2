"""Instruction-tune a causal LM on the filter's kept rows with Ray Train (v2).

Each worker runs a plain torch loop, not HF `Trainer`: the data already arrives as Ray Data
shards (Trainer wants its own DataLoader and sampler), Ray Train already owns the process
group, checkpoints and retries (Trainer would duplicate them), and the whole loop (gradient
accumulation, cosine schedule, checkpoints, resume, metrics, export) fits on a screen, so
what every step does is plain to read. Defaults are the paper's (Alpaca's) recipe.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import fsspec

from alpagasus_ray.data.io import filesystem, join, write_json
from alpagasus_ray.train.config import (
    TrainConfig,
    export_uri,
    grad_accumulation,
    run_dir,
)
from alpagasus_ray.train.data import (
    check_conversations,
    kept_input,
    trained_on,
    training_dataset,
)
from alpagasus_ray.train.metrics import (
    METRICS_FILE,
    SUMMARY_FILE,
    Meter,
    read_jsonl,
    read_run_metrics,
    summarize,
    write_jsonl,
    write_run_metrics,
)

logger = logging.getLogger(__name__)

STATE_FILE, MODEL_FILE, OPTIM_FILE = "state.json", "model.pt", "optimizer.pt"
LOCAL = fsspec.filesystem("file")  # where a checkpoint is assembled before Ray uploads it

# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig) -> Any:
    """fp32 weights (bf16 compute comes from autocast), LoRA-wrapped when configured."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.name, dtype=torch.float32, trust_remote_code=cfg.model.trust_remote_code
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


def fsdp_kwargs(model: Any, strategy: str) -> dict[str, Any] | None:
    """FSDP units per decoder layer (the model's `_no_split_modules`); orig params for LoRA."""
    if strategy != "fsdp":
        return None
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = {type(m) for m in model.modules() if type(m).__name__ in names}
    kwargs: dict[str, Any] = {"use_orig_params": True}
    if layers:
        kwargs["auto_wrap_policy"] = functools.partial(
            transformer_auto_wrap_policy, transformer_layer_cls=layers
        )
    return kwargs


def lr_lambda(kind: str, warmup: int, total: int, offset: int = 0) -> Any:
    """Linear warmup then cosine/linear decay to 0 (HF's schedules); `offset` resumes it."""

    def fn(local_step: int) -> float:
        step = local_step + offset
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress) if kind == "linear" else 1.0

    return fn


# ---------------------------------------------------------------- the worker loop


def read_checkpoint(d: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[Any]]:
    """A checkpoint's weights, optimizer state, progress and metrics history. Tensors and
    plain values only (`weights_only`): a checkpoint folder is data, and loading one must
    not run code that whoever wrote it put in a pickle."""
    import torch

    weights = torch.load(os.path.join(d, MODEL_FILE), weights_only=True)
    optim_state = torch.load(os.path.join(d, OPTIM_FILE), weights_only=True)
    state = json.loads(Path(d, STATE_FILE).read_text())
    return weights, optim_state, state, read_jsonl(LOCAL, os.path.join(d, METRICS_FILE))


def train_loop(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: resume, train, checkpoint each epoch, export."""
    import ray.train
    import ray.train.torch
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    from alpagasus_ray.text.models import load_tokenizer
    from alpagasus_ray.train.data import ATTENTION_MASK, LABELS, PadCollate

    cfg = TrainConfig.model_validate(config["cfg"])
    t, ctx = cfg.train, ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    torch.manual_seed(t.seed)
    device = ray.train.torch.get_device()
    tok = load_tokenizer(
        cfg.model.tokenizer or cfg.model.name, cfg.model.trust_remote_code, "right"
    )
    model = build_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    state: dict[str, Any] = {"epoch": 0, "step": 0, "elapsed_s": 0.0}
    history: list[dict[str, Any]] = []
    optim_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # weights before wrapping, so DDP and FSDP load them alike
        with checkpoint.as_directory() as d:
            weights, optim_state, state, history = read_checkpoint(d)
            model.load_state_dict(weights, strict=not t.lora)
    model = ray.train.torch.prepare_model(
        model, parallel_strategy=t.strategy, parallel_strategy_kwargs=fsdp_kwargs(model, t.strategy)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    for group in optimizer.param_groups:  # the schedule restarts from the base lr + offset
        group["initial_lr"] = t.learning_rate  # (and the saved groups have this key too)
    if optim_state is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=full)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = t.learning_rate

    accum = grad_accumulation(t.global_batch_size, world, t.per_device_batch_size)
    micro_per_epoch = math.ceil(config["examples"] // world / t.per_device_batch_size)
    total = math.ceil(micro_per_epoch / accum) * t.epochs
    step = start_step = state["step"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(t.lr_scheduler, math.ceil(t.warmup_ratio * total), total, step)
    )
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    shard = ray.train.get_dataset_shard("train")
    collate = PadCollate(tok.pad_token_id)
    started = time.perf_counter()
    context = {
        "resumed_from_epoch": state["epoch"],
        "resumed_from_step": start_step,
        "skipped_rows": config["skipped_rows"],
        "total_steps": total,
    }

    def record(kind: str, meter: Meter, epoch: int) -> dict[str, Any]:
        elapsed = state["elapsed_s"] + time.perf_counter() - started
        row = {"kind": kind, "epoch": epoch, "step": step, **meter.row(), "elapsed_s": elapsed}
        row.update(lr=scheduler.get_last_lr()[0], **context)
        history.append(row)
        return row

    for epoch in range(state["epoch"], t.epochs):
        model.train()
        epoch_meter, step_meter = Meter(device), Meter(device)
        batches = shard.iter_torch_batches(
            batch_size=t.per_device_batch_size,
            collate_fn=collate,
            device=device,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=t.seed + epoch if cfg.data.shuffle_buffer else None,
        )
        for micro, batch in enumerate(batches, start=1):
            boundary = micro % accum == 0 or micro == micro_per_epoch
            # Gradients are all-reduced only on the micro-batch that steps the optimizer.
            sync = getattr(model, "no_sync", None)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if boundary or sync is None:
                    loss = model(**batch).loss
                    (loss / accum).backward()
                else:
                    with sync():
                        loss = model(**batch).loss
                        (loss / accum).backward()
            mask = batch[ATTENTION_MASK]
            for m in (epoch_meter, step_meter):
                m.add(loss.item(), int(mask.sum()), len(batch[LABELS]), mask.numel())
            if boundary:
                if hasattr(model, "clip_grad_norm_"):  # FSDP: the norm spans every shard
                    model.clip_grad_norm_(t.max_grad_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % t.log_every_steps == 0:  # kept in the run's metrics, not reported
                    record("step", step_meter, epoch)
                    step_meter = Meter(device)
        row = record("epoch", epoch_meter, epoch)
        model_state = get_model_state_dict(model, options=full)  # collective under FSDP
        optim_full = get_optimizer_state_dict(model, optimizer, options=full)
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                if t.lora:  # the frozen base is reloaded from the hub; keep only adapters
                    model_state = {k: v for k, v in model_state.items() if k in trainable}
                torch.save(model_state, os.path.join(d, MODEL_FILE))
                torch.save(optim_full, os.path.join(d, OPTIM_FILE))
                done = {"epoch": epoch + 1, "step": step, "elapsed_s": row["elapsed_s"]}
                with open(os.path.join(d, STATE_FILE), "w") as f:
                    json.dump(done, f)
                write_jsonl(LOCAL, os.path.join(d, METRICS_FILE), history)
                write_run_metrics(cfg, history)
                ckpt = ray.train.Checkpoint.from_directory(d)
            # Ray Train gets one report per epoch, with its checkpoint: its controller takes a
            # worker's report only when it polls (every 2 s by default) and the next report
            # waits until then, so a report per logged step held back every step faster than
            # that (`benchmarks/bench_train_reports.py`). Step rows go to the run's metrics.
            ray.train.report(row, checkpoint=ckpt)

    model_state = get_model_state_dict(model, options=full)
    if rank == 0:
        export(cfg, model_state, tok, bf16)


# ---------------------------------------------------------------- outputs


def export(cfg: TrainConfig, state: dict[str, Any], tokenizer: Any, bf16: bool) -> None:
    """Hugging Face format (LoRA merged in) that transformers and vLLM load as they are."""
    import torch

    model = build_model(cfg)
    model.load_state_dict(state, strict=not cfg.train.lora)
    if cfg.train.lora:
        model = model.merge_and_unload()
    if bf16:
        model = model.to(torch.bfloat16)
    fs, dest = filesystem(export_uri(cfg), cfg.storage)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        if fs.exists(dest):
            fs.rm(dest, recursive=True)
        fs.makedirs(dest, exist_ok=True)
        fs.put(d.rstrip("/") + "/", dest, recursive=True)


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train; a rerun with the same run name and storage path resumes from its checkpoint."""
    import ray.train
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    from ray.train.torch import TorchTrainer

    from alpagasus_ray.core.runtime import init_ray

    kept_input(cfg)  # an unfinished filter output is refused before Ray starts
    messages = check_conversations(cfg)  # and conversations for a model without a template
    init_ray(cfg.ray)
    started = time.time()
    ds, counts = training_dataset(cfg, messages)
    if counts["skipped_rows"]:
        logger.warning(
            "skipping %d of %d rows that cannot be trained on: %s",
            counts["skipped_rows"],
            counts["rows_read"],
            counts["skipped_by_reason"],
        )
    if counts["examples"] < cfg.run.num_workers:
        raise ValueError(f"{counts['examples']} trainable rows for {cfg.run.num_workers} workers")
    fs, storage = filesystem(cfg.run.storage_path, cfg.storage)
    remote = cfg.run.storage_path.startswith(("s3://", "s3a://"))
    resources = {"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if cfg.run.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.model_dump(),  # SecretStr values stay secret in transit
            "examples": counts["examples"],
            "skipped_rows": counts["skipped_rows"],
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.run.num_workers,
            use_gpu=cfg.run.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage,  # absolute: the config made it so
            storage_filesystem=PyFileSystem(FSSpecHandler(fs)) if remote else None,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        ),
        datasets={"train": ds},
    )
    result = trainer.fit()
    metrics = read_run_metrics(cfg)
    last = result.metrics or {}
    summary = {
        "run_dir": run_dir(cfg),
        "export": export_uri(cfg),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        **counts,
        "trained_on": trained_on(cfg),
        "resumed_from_epoch": last.get("resumed_from_epoch", 0),
        "resumed_from_step": last.get("resumed_from_step", 0),
        **summarize(metrics),
        "wall_seconds": round(time.time() - started, 3),
        "config": cfg.model_dump(mode="json"),
    }
    fs_run, path = filesystem(join(run_dir(cfg), SUMMARY_FILE), cfg.storage)
    write_json(fs_run, path, summary)
    return {**summary, "metrics": metrics}
