"""A training checkpoint is loaded as data (`weights_only`): the optimizer state a resume
needs loads whole, and a pickle that would run code on load is refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from alpagasus_ray.train.loop import LOCAL, MODEL_FILE, OPTIM_FILE, STATE_FILE, read_checkpoint
from alpagasus_ray.train.metrics import METRICS_FILE, write_jsonl


def checkpoint(folder: Path, optim_state: object) -> str:
    """A checkpoint folder as `train_loop` writes one, with `optim_state` as its optimizer."""
    torch.save(torch.nn.Linear(4, 2).state_dict(), folder / MODEL_FILE)
    torch.save(optim_state, folder / OPTIM_FILE)
    (folder / STATE_FILE).write_text(json.dumps({"epoch": 1, "step": 3, "elapsed_s": 1.0}))
    write_jsonl(LOCAL, str(folder / METRICS_FILE), [{"kind": "epoch", "loss": 1.0}])
    return str(folder)


def test_the_optimizer_state_of_a_resume_loads_with_weights_only(tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # as train_loop saves it
    saved = get_optimizer_state_dict(model, optimizer, options=full)
    _, loaded, state, history = read_checkpoint(checkpoint(tmp_path, saved))
    assert loaded["param_groups"] == saved["param_groups"]
    for name, tensors in saved["state"].items():
        for key, value in tensors.items():
            assert torch.equal(loaded["state"][name][key], value)
    assert state["step"] == 3 and history == [{"kind": "epoch", "loss": 1.0}]


class RunsCode:
    """Unpickled, it would create `flag`: what a crafted checkpoint could do instead."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def test_a_checkpoint_pickle_that_runs_code_is_refused(tmp_path):
    flag = tmp_path / "code-ran"
    folder = checkpoint(tmp_path, {"state": {}, "param_groups": [], "x": RunsCode(flag)})
    with pytest.raises(pickle.UnpicklingError):
        read_checkpoint(folder)
    assert not flag.exists()
