"""The hash stand-in judge (`judge.engine: hash`): no model and no torch, a score that is a
pure function of the prompt, and an output that says it is no rating: export refuses it,
training too unless told otherwise, and the pairwise evaluation cannot use it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import STAND_IN, job_config, job_data
from helpers import write_jsonl

from alpagasus_ray.core.config import ConfigError, JudgeConfig, build_config
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.engines import judgement_fields, make_engine
from alpagasus_ray.engines.hash import STAND_IN_NOTE, HashEngine
from alpagasus_ray.filter.preflight import check_judge
from alpagasus_ray.pipeline import PipelineConfig


def stand_in(mode: str = "logprobs") -> JudgeConfig:
    return JudgeConfig(engine="hash", model=STAND_IN, mode=mode)


def scores(cfg: JudgeConfig, requests: list[str | None]) -> list[dict]:
    engine = make_engine(cfg)
    outs = engine.judge([None] * len(requests), requests)
    return [judgement_fields(o, cfg.mode, engine.score_tokens, 0.5) for o in outs]


def test_the_score_is_a_pure_function_of_the_prompt_spread_over_the_scale():
    prompts = [json.dumps({"messages": [{"content": f"row {i}"}]}) for i in range(300)]
    first, again = scores(stand_in(), prompts), scores(stand_in(), prompts)
    assert isinstance(make_engine(stand_in()), HashEngine)
    assert first == again
    values = [f["score"] for f in first]
    assert len(set(values)) == len(values)  # distinct prompts, distinct scores
    assert min(values) < 1.5 and max(values) > 3.5  # both sides of any usual threshold
    assert all(f["score_mass"] == pytest.approx(1.0) for f in first)
    assert all(sum(f["score_probs"]) == pytest.approx(1.0) for f in first)


def test_generate_mode_answers_its_likeliest_digit_and_nothing_is_no_prompt():
    requests = [json.dumps({"messages": [{"content": c}]}) for c in "ab"] + [None]
    logprobs = scores(stand_in(), requests)
    generate = scores(stand_in("generate"), requests)
    for lp, gen in zip(logprobs[:2], generate[:2], strict=True):
        best = max(range(6), key=lp["score_probs"].__getitem__)
        assert gen["score"] == best and gen["judge_text"].startswith(f"{best}\n")
        assert STAND_IN_NOTE in gen["judge_text"]
    for out in (logprobs[2], generate[2]):
        assert (out["decision"], out["reason"]) == ("failed", "engine_error")


def test_it_runs_the_prompt_and_score_stages_without_torch(tmp_path):
    """The point of the stand-in: a replica that imports no torch (several seconds a process
    on a small machine). A fresh interpreter runs both stages on real rows."""
    code = f"""
import json, sys
import pyarrow as pa
from alpagasus_ray.core.config import JudgeConfig
from alpagasus_ray.filter.stages.prompt import PromptStage
from alpagasus_ray.filter.stages.score import ScoreStage
cfg = JudgeConfig(engine="hash", model={STAND_IN!r})
table = pa.Table.from_pylist([{{"instruction": "Add 1 and 2.", "input": "", "output": "3"}}])
out = ScoreStage(cfg)(PromptStage(cfg)(table))
print(json.dumps({{"score": out.column("score")[0].as_py(), "torch": "torch" in sys.modules}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["torch"] is False
    assert 0.0 <= got["score"] <= 5.0


def test_preflight_asks_nothing_of_its_label():
    check_judge(stand_in())  # "stand-in" is neither a folder nor a model: it is a label
    with pytest.raises(Exception, match="judge.tokenizer"):
        check_judge(JudgeConfig(engine="hash", model=STAND_IN, tokenizer="/no/such/folder"))


def test_a_pipeline_on_the_stand_in_is_refused_before_it_filters(tmp_path):
    data = {
        **job_data("in.jsonl", str(tmp_path / "out"), STAND_IN),
        "finetune": {"model": {"name": "m"}, "run": {"name": "sft", "storage_path": "runs"}},
    }
    with pytest.raises(ConfigError, match="judge.engine=hash is a stand-in"):
        build_config(PipelineConfig, data)
    data["finetune"]["data"] = {"allow_stand_in_judge": True}
    assert build_config(PipelineConfig, data).judge.engine == "hash"


def test_its_output_says_it_is_no_rating_and_train_and_export_refuse_it(ray_session, tmp_path):
    from alpagasus_ray.filter.export import ExportRefused, export
    from alpagasus_ray.filter.job import run_filter
    from alpagasus_ray.train.config import TrainConfig
    from alpagasus_ray.train.data import kept_input

    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(30, seed=2))
    out = tmp_path / "out"
    manifest = run_filter(job_config(str(src), str(out), STAND_IN))
    assert manifest.status == "complete" and manifest.judge["engine"] == "hash"
    assert manifest.rows_read == 30 == manifest.counts["kept"] + manifest.counts["rejected"]
    assert f"**Not a rating:** {STAND_IN_NOTE}" in (out / "report.md").read_text()

    run = {"name": "sft", "storage_path": str(tmp_path / "runs")}
    train = {"data": {"uri": str(out)}, "model": {"name": "m"}, "run": run}
    with pytest.raises(ValueError, match="refusing to train on what it kept"):
        kept_input(TrainConfig.model_validate(train))
    with pytest.raises(ExportRefused, match="nothing to export"):
        export(str(out), "alpaca", str(tmp_path / "kept.json"))
    assert not (tmp_path / "kept.json").exists()
    train["data"]["allow_stand_in_judge"] = True
    files = kept_input(TrainConfig.model_validate(train))[1].files
    assert len(files) >= 1
