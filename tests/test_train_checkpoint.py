"""A training checkpoint is loaded as data: the resume path (`Trainer.train` with
`resume_from_checkpoint`, as each Ray Train worker calls it) loads the optimizer state with
`weights_only`, so a pickle that would run code on load is refused; and the progress a
resume starts from is read from the checkpoint's own state file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from alpagasus_ray.train.reporting import resume_point


class RunsCode:
    """Unpickled, it would create `flag`: what a crafted checkpoint could do instead."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def test_a_checkpoint_pickle_that_runs_code_is_refused(tiny_judge, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    rows = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([1, 2, 3])}] * 8

    def trainer(steps: int) -> Trainer:
        model = AutoModelForCausalLM.from_pretrained(tiny_judge)
        args = TrainingArguments(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to="none",
            max_steps=steps,
            per_device_train_batch_size=2,
            save_steps=1,
            num_train_epochs=1,
        )
        return Trainer(model=model, args=args, train_dataset=rows)

    trainer(1).train()  # a real checkpoint: checkpoint-1
    folder = tmp_path / "checkpoint-1"
    assert resume_point(str(folder)) == (0, 1) and resume_point(None) == (0, 0)
    flag = tmp_path / "code-ran"
    torch.save({"state": {}, "param_groups": [], "x": RunsCode(flag)}, folder / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        trainer(2).train(resume_from_checkpoint=str(folder))
    assert not flag.exists()
