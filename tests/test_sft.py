"""SFT encoding: the Alpaca templates, loss only on response tokens, truncation, padding."""

import numpy as np
import pyarrow as pa
import pytest

from alpagasus_ray.text.models import load_tokenizer
from alpagasus_ray.text.prompts import alpaca_prompt
from alpagasus_ray.train.config import grad_accumulation
from alpagasus_ray.train.data import (
    IGNORE_INDEX,
    EncodeStage,
    PadCollate,
    encode_example,
    tally_skips,
    trainable_only,
)


@pytest.fixture(scope="module")
def tok(tiny_judge):
    return load_tokenizer(str(tiny_judge), padding_side="right")


def test_labels_mask_exactly_the_prompt(tok):
    ids, labels = encode_example(tok, "Add the numbers.", "2 and 3", "5", max_length=512)
    prompt = [tok.bos_token_id] + tok.encode(
        alpaca_prompt("Add the numbers.", "2 and 3"), add_special_tokens=False
    )
    response = tok.encode("5", add_special_tokens=False) + [tok.eos_token_id]
    assert ids == prompt + response
    assert labels == [IGNORE_INDEX] * len(prompt) + response
    assert tok.decode(ids[len(prompt) :], skip_special_tokens=True) == "5"


def test_no_input_template(tok):
    ids, labels = encode_example(tok, "Say hi.", "", "Hi!", max_length=512)
    text = tok.decode(ids, skip_special_tokens=True)
    assert "### Input:" not in text and text.endswith("### Response:Hi!")
    n_prompt = sum(1 for label in labels if label == IGNORE_INDEX)
    assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == "Hi!"


def test_truncation_keeps_the_mask_and_drops_response_less_rows(tok):
    n_prompt = 1 + len(tok.encode(alpaca_prompt("Say hi.", ""), add_special_tokens=False))
    limit = n_prompt + 10
    ids, labels = encode_example(tok, "Say hi.", "", "word " * 200, max_length=limit)
    assert len(ids) == len(labels) == limit
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert all(label != IGNORE_INDEX for label in labels[n_prompt:])
    assert encode_example(tok, "Say hi.", "", "x", max_length=n_prompt) == ([], [])


def test_collate_pads_to_the_longest_row_only():
    batch = {
        "input_ids": np.array([[5, 6, 7], [8]], dtype=object),
        "labels": np.array([[-100, 6, 7], [8]], dtype=object),
    }
    out = PadCollate(pad_token_id=0)(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_a_packed_batch_has_the_padded_batchs_loss_and_no_row_sees_another(tiny_judge, tok):
    """Packing changes no number: the packed batch's loss equals the padded batch's (the
    same label tokens, each row attending only to itself); the same tokens with positions
    that do not restart (rows attending to the rows before them) give another loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from alpagasus_ray.train.data import PackCollate

    pairs = [
        encode_example(tok, "Add the numbers.", "2 and 3", "5", max_length=512),
        encode_example(tok, "Say hi.", "", "Hi there, how are you today?", max_length=512),
        encode_example(tok, "Name a colour.", "", "Blue.", max_length=512),
    ]
    batch = {
        "input_ids": np.array([ids for ids, _ in pairs], dtype=object),
        "labels": np.array([labels for _, labels in pairs], dtype=object),
    }
    model = AutoModelForCausalLM.from_pretrained(tiny_judge).eval()
    padded, packed = PadCollate(tok.pad_token_id)(batch), PackCollate()(batch)
    assert packed["rows"].item() == 3 and "attention_mask" not in packed
    assert packed["input_ids"].shape == (1, sum(len(ids) for ids, _ in pairs))
    del packed["rows"]
    with torch.no_grad():
        loss_padded = model(**padded, use_cache=False).loss
        loss_packed = model(**packed, use_cache=False).loss
        one_row = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
        loss_leaking = model(**one_row, use_cache=False).loss
    # Same label tokens: the padded batch never scores a row's first token either.
    assert (padded["labels"][:, 1:] != IGNORE_INDEX).sum() == (
        packed["labels"] != IGNORE_INDEX
    ).sum()
    assert torch.allclose(loss_packed, loss_padded, atol=1e-5), (loss_packed, loss_padded)
    assert abs(loss_leaking - loss_padded) > 1e-3, (loss_leaking, loss_padded)


def test_gradient_accumulation_is_derived_from_the_global_batch():
    assert grad_accumulation(128, workers=2, per_device=4) == 16
    assert grad_accumulation(128, workers=8, per_device=16) == 1
    with pytest.raises(ValueError, match="multiple"):
        grad_accumulation(128, workers=3, per_device=4)


def test_templates_exact_text_and_label_boundary(tok):
    """The exact Alpaca wording, BOS first, and the first label is the response's first token."""
    ids, labels = encode_example(tok, "Name a colour.", "", "Blue.", max_length=512)
    n_prompt = labels.index(next(label for label in labels if label != IGNORE_INDEX))
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:n_prompt]) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:"
    )
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tok.decode(labels[n_prompt:]) == "Blue.</s>"
    ids, labels = encode_example(tok, "Add.", "2 and 3", "5", max_length=512)
    n_prompt = sum(1 for label in labels if label == IGNORE_INDEX)
    assert tok.decode(ids[1:n_prompt]) == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:"
    )
    assert tok.decode(labels[n_prompt:]) == "5</s>"


def test_encode_stage_skips_quarantined_and_response_less_rows(tiny_judge):
    table = pa.table(
        {
            "instruction": ["Say hi.", None, "Say hi."],
            "input": ["", "", "word " * 400],
            "output": ["Hi!", None, "Hi!"],
            "decision": [None, "quarantined", None],
            "reason": [None, "missing_field", None],
        }
    )
    out = EncodeStage(str(tiny_judge), max_length=160)(table)
    assert out.column("skip").to_pylist() == [None, "missing_field", "no_response_tokens"]
    assert [len(r) for r in out.column("input_ids").to_pylist()][1:] == [0, 0]
    counts = tally_skips(out)
    tally = dict(zip(counts["skip"].to_pylist(), counts["n"].to_pylist(), strict=True))
    assert tally == {"": 1, "missing_field": 1, "no_response_tokens": 1}
    kept = trainable_only(out)
    assert kept.column_names == ["input_ids", "labels"] and kept.num_rows == 1


def test_the_papers_recipe_reaches_the_trainer(tiny_judge, tmp_path):
    """The defaults as `Trainer` sees them: 3 epochs, lr 2e-5, cosine, warmup 3% of the
    steps (rounded up), global batch 128 from 2 workers x 4 rows x 16 accumulated batches."""
    from alpagasus_ray.core.config import build_config
    from alpagasus_ray.train.config import TrainConfig
    from alpagasus_ray.train.worker import training_arguments

    cfg = build_config(
        TrainConfig,
        {
            "data": {"uri": "x.jsonl"},
            "model": {"name": str(tiny_judge)},
            "run": {"storage_path": str(tmp_path)},
        },
    )
    args = training_arguments(cfg, str(tmp_path / "out"), world=2)
    assert (args.num_train_epochs, args.learning_rate) == (3, 2e-5)
    assert args.lr_scheduler_type == "cosine" and args.get_warmup_steps(100) == 3
    assert args.gradient_accumulation_steps == 16 and args.per_device_train_batch_size == 4
    assert (args.bf16, args.max_grad_norm, args.weight_decay) == (False, 1.0, 0.0)


def test_bf16_loads_only_a_frozen_lora_base_in_bf16(tiny_judge, tmp_path):
    import torch

    from alpagasus_ray.core.config import build_config
    from alpagasus_ray.train.config import TrainConfig
    from alpagasus_ray.train.worker import load_dtype

    def dtype(**train):
        raw = {"data": {"uri": "x"}, "model": {"name": str(tiny_judge)}, "train": train}
        return load_dtype(build_config(TrainConfig, {**raw, "run": {"storage_path": "r"}}))

    assert dtype(precision="bf16") is torch.float32  # fp32 master weights, bf16 autocast
    assert dtype(precision="bf16", lora={"r": 4}) is torch.bfloat16
    assert dtype(lora={"r": 4}) is torch.float32  # auto on CPU


def test_lora_checkpoint_keeps_adapters_and_export_merges_them(tiny_judge, tmp_path, tok):
    """The LoRA path without Ray: adapters only in the checkpoint, merged in the export."""
    import torch
    from transformers import AutoModelForCausalLM

    from alpagasus_ray.core.config import build_config
    from alpagasus_ray.train.config import TrainConfig
    from alpagasus_ray.train.worker import build_model, export

    cfg = build_config(
        TrainConfig,
        {
            "data": {"uri": "x.jsonl"},
            "model": {"name": str(tiny_judge)},
            "train": {"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
            "run": {"storage_path": str(tmp_path), "export_uri": str(tmp_path / "merged")},
        },
    )
    model = build_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    state = {k: v for k, v in model.state_dict().items() if k in trainable}
    for k in state:
        if "lora_B" in k:
            state[k] = torch.full_like(state[k], 0.01)  # B = 0 at init: make the merge visible
    export(cfg, state, tok)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_judge)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])
    assert not any("lora" in k for k in merged.state_dict())


def test_fsdp_wraps_each_decoder_layer_and_saves_shards(tiny_judge):
    """FSDP's settings as `Trainer` gets them (FSDP itself needs GPUs: not run here)."""
    from alpagasus_ray.core.config import build_config
    from alpagasus_ray.train.config import TrainConfig
    from alpagasus_ray.train.worker import fsdp_settings

    raw = {"data": {"uri": "x"}, "model": {"name": str(tiny_judge)}, "run": {"storage_path": "r"}}
    assert fsdp_settings(build_config(TrainConfig, raw)) == {}  # ddp
    fsdp = fsdp_settings(build_config(TrainConfig, {**raw, "train": {"strategy": "fsdp"}}))
    assert fsdp["fsdp"] == "full_shard auto_wrap"
    config = fsdp["fsdp_config"]
    assert config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert config["state_dict_type"] == "SHARDED_STATE_DICT"  # no whole gather to rank 0
    assert config["cpu_ram_efficient_loading"] and config["sync_module_states"]
