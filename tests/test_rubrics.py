"""A user's own rubric (`judge.rubric` as a template, `judge.rubric_file`): refused in one
line when it cannot work, rendered in both layouts, tokenized by the cached-head path as
whole, and judged by the stand-in and the HF engine as the run's identity."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from conftest import S3_CREDENTIALS, cli_refusal, filter_args, job_config, s3_client
from helpers import CODE_RUBRIC, numbered_rows, write_jsonl
from test_prompts import EDGE_ROWS

from alpagasus_ray.core.config import ConfigError, load_config
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.job import run_filter
from alpagasus_ray.filter.preflight import PreflightError
from alpagasus_ray.filter.rubric_file import MAX_RUBRIC_BYTES, with_rubric_file
from alpagasus_ray.text.models import load_tokenizer
from alpagasus_ray.text.prompts import (
    EXAMPLE_CLOSE,
    EXAMPLE_OPEN,
    FENCE_NOTE,
    PAPER_TRIPLET,
    RATING_PROMPTS,
    SYSTEM_PROMPT,
    PromptEncoder,
    prompt_hash,
    rating_messages,
)
from alpagasus_ray.text.rubrics import rubric_label

# The paper's accuracy prompt in the paper layout, spelt out as a template.
PAPER_AS_TEMPLATE = PAPER_TRIPLET + RATING_PROMPTS["accuracy"].replace("{", "{{").replace("}", "}}")


def config(*sets: str) -> FilterJobConfig:
    base = ["input.uri=in.jsonl", "output.uri=out", "judge.model=m"]
    return load_config(None, base + list(sets), model=FilterJobConfig)


@pytest.mark.parametrize(
    ("rubric", "said"),
    [
        ("acuracy", "'acuracy' is neither the paper's rubric (accuracy, helpfulness) nor a "
                    "template with an {output} field"),
        ("Rate {instruction} alone.", "nor a template with an {output} field: the judge would "
                                      "not see the answer it rates"),
        ("Rate {answer}: {output}", "unknown field {answer} (a template's fields: "
                                    "{instruction}, {input}, {output}"),
        ("Rate {}: {output}", "unknown field a bare {}"),
        ("Score as {'json': 1} {output}", "unknown field {'json'"),
        ("Rate {output!r}", "formats its field {output}: a field takes no '!' or ':'"),
        ("Rate {output:>9}", "formats its field {output}"),
        ("Rate } {output}", "lone '{' or '}' (write '{{' or '}}' for a literal brace)"),
        ("  \n", "the rubric is empty"),
    ],
)  # fmt: skip
def test_a_rubric_that_cannot_work_is_refused_in_one_line(rubric, said):
    with pytest.raises(ConfigError) as e:
        config(f"judge.rubric={json.dumps(rubric)}")
    line = str(e.value)
    assert "\n" not in line and line.startswith("invalid configuration (judge.rubric): ")
    assert said in line


def test_the_old_dimension_key_is_the_rubric_and_not_beside_it():
    assert config("judge.dimension=helpfulness").judge.rubric == "helpfulness"
    with pytest.raises(ConfigError, match="judge.dimension is the old name of judge.rubric"):
        config("judge.dimension=helpfulness", "judge.rubric=accuracy")


def test_conversation_rows_take_the_papers_rubrics_only():
    assert config("input.columns.messages=chat", "judge.rubric=helpfulness")
    for rubric in (f"judge.rubric={json.dumps(CODE_RUBRIC)}", "judge.rubric_file=mine.txt"):
        with pytest.raises(ConfigError, match="a custom template rates instruction rows"):
            config("input.columns.messages=chat", rubric)


def test_a_rubric_file_takes_its_own_scale_beside_a_config_that_names_the_default(tmp_path):
    """A job file says `rubric: accuracy`; the user adds a file and its scale with --set."""
    path = tmp_path / "nine.txt"
    path.write_text("Rate from 0 to 9, the score first.\n{instruction}\n{output}")
    cfg = config("judge.rubric=accuracy", f"judge.rubric_file={path}", "judge.scale=[0, 9]",
                 "filter.threshold=7")  # fmt: skip
    assert with_rubric_file(cfg.judge, cfg.storage).rubric == path.read_text()


ROW = {"instruction": "Reverse a list.", "input": "[1, 2]", "output": "xs[::-1] </example> {x}"}


def test_the_paper_layout_fills_the_template_as_written():
    system, user = rating_messages(*ROW.values(), CODE_RUBRIC, "paper")
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["content"] == CODE_RUBRIC.format(**ROW)  # braces in a value stay as they are
    assert rating_messages(*ROW.values(), PAPER_AS_TEMPLATE, "paper") == rating_messages(
        *ROW.values(), "accuracy", "paper"
    )


def test_the_prefix_layout_keeps_the_text_before_the_row_first_and_fences_the_row():
    user = rating_messages(*ROW.values(), CODE_RUBRIC, "prefix")[1]["content"]
    head = CODE_RUBRIC[: CODE_RUBRIC.index("{instruction}")]
    assert user.startswith(head + FENCE_NOTE + EXAMPLE_OPEN + "\n" + ROW["instruction"])
    assert user.endswith(
        f"xs[::-1] <\\/example> {{x}}\n{EXAMPLE_CLOSE}\n\nScore (0-5), first line:"
    )
    fenced = user.split(FENCE_NOTE)[1]
    assert fenced.count(EXAMPLE_CLOSE) == 1  # the answer's own tag cannot close the fence
    row_only = "{input}\n{output}"  # no text before the row: the fence note leads
    user = rating_messages(*ROW.values(), row_only, "prefix")[1]["content"]
    row = "[1, 2]\nxs[::-1] <\\/example> {x}"
    assert user == f"{FENCE_NOTE}{EXAMPLE_OPEN}\n{row}\n{EXAMPLE_CLOSE}"


def test_the_prompt_hash_and_label_follow_the_template_text():
    other = CODE_RUBRIC.replace("0 (wrong)", "0 (broken)")
    hashes = {prompt_hash(r, "prefix") for r in ("accuracy", "helpfulness", CODE_RUBRIC, other)}
    assert len(hashes) == 4
    assert rubric_label("accuracy") == "accuracy"
    assert rubric_label(CODE_RUBRIC).startswith("custom sha256:")
    assert rubric_label(CODE_RUBRIC) != rubric_label(other)


@pytest.mark.parametrize("layout", ["paper", "prefix"])
@pytest.mark.parametrize("rubric", [CODE_RUBRIC, "{output}", "Q: {instruction}\nA: {output}"])
def test_a_templates_cached_head_gives_the_whole_prompts_ids(tiny_judge, layout, rubric):
    rows = EDGE_ROWS + synthetic_examples(50, seed=2) + [ROW]
    encoder = PromptEncoder(load_tokenizer(str(tiny_judge)), rubric, layout)
    assert encoder.split
    assert encoder(rows) == encoder.full(rows)


def test_a_rubric_file_is_read_once_into_the_rubric(tmp_path):
    path = tmp_path / "code.txt"
    path.write_bytes(b"\xef\xbb\xbf" + CODE_RUBRIC.encode())  # a BOM from a Windows editor
    cfg = config(f"judge.rubric_file={path}")
    resolved = with_rubric_file(cfg.judge, cfg.storage)
    assert resolved.rubric == CODE_RUBRIC and cfg.judge.rubric == "accuracy"
    assert with_rubric_file(resolved, cfg.storage) is resolved  # read already


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "judge rubric (judge.rubric_file): no such file "),
        (b"Rate \xff {output}", "is not UTF-8 text (byte 0xff at offset 5)"),
        (b"Rate {answer}", "the template has an unknown field {answer}"),
        (b"", "the rubric is empty"),
        (b"{output}" + b" " * MAX_RUBRIC_BYTES, f"is over {MAX_RUBRIC_BYTES} bytes"),
    ],
)
def test_a_rubric_file_that_cannot_be_used_is_refused_by_name(tmp_path, content, said):
    path = tmp_path / "rubric.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PreflightError) as e:
        cfg = config(f"judge.rubric_file={path}")
        with_rubric_file(cfg.judge, cfg.storage)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_rubric_file_on_s3_is_read_with_the_jobs_storage(s3_endpoint):
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="rubrics")
    client.put_object(Bucket="rubrics", Key="code.txt", Body=CODE_RUBRIC.encode())
    storage = [f"{k.replace('__', '.')}={v}" for k, v in S3_CREDENTIALS.items()]
    storage.append(f"storage.endpoint_url={s3_endpoint}")
    cfg = config("judge.rubric_file=s3://rubrics/code.txt", *storage)
    assert with_rubric_file(cfg.judge, cfg.storage).rubric == CODE_RUBRIC
    missing = config("judge.rubric_file=s3://rubrics/none.txt", *storage)
    with pytest.raises(PreflightError, match=r"no such file s3://rubrics/none.txt$"):
        with_rubric_file(missing.judge, missing.storage)


def test_a_rubric_file_beside_another_rubric_is_refused(tmp_path):
    path = tmp_path / "rubric.txt"
    path.write_text(CODE_RUBRIC)
    cfg = config(f"judge.rubric_file={path}", "judge.rubric=helpfulness")
    said = r"^judge rubric \(judge.rubric_file\): judge.rubric is set too \(helpfulness\): "
    with pytest.raises(PreflightError, match=said):
        with_rubric_file(cfg.judge, cfg.storage)


def test_a_library_call_reads_the_rubric_file_too(ray_session, stand_in, tmp_path):
    """`judge_dataset` with a rubric file judges with its text, as the job does."""
    from alpagasus_ray.core.config import JudgeConfig
    from alpagasus_ray.filter.judge import judge_dataset

    path = tmp_path / "code.txt"
    path.write_text(CODE_RUBRIC)
    rows = numbered_rows(12, 6)
    scores = {}
    for name, judge in {"file": {"rubric_file": str(path)}, "text": {"rubric": CODE_RUBRIC},
                        "paper": {}}.items():  # fmt: skip
        cfg = JudgeConfig(engine="hash", model=stand_in, num_cpus_per_replica=0.5, **judge)
        ds = judge_dataset(ray_session.data.from_items(rows), cfg)
        scores[name] = {r["row"]: r["score"] for r in ds.take_all()}
    assert scores["file"] == scores["text"] != scores["paper"]


def test_the_cli_refuses_an_unusable_rubric_file_before_ray(tmp_path, capsys, stand_in):
    src = write_jsonl(tmp_path / "rows.jsonl", synthetic_examples(4))
    bad = tmp_path / "rubric.txt"
    bad.write_text("Rate the answer from 0 to 5.")  # forgot the answer's field
    args = filter_args(tmp_path, src, stand_in, f"judge.rubric_file={bad}")
    line, _ = cli_refusal(capsys, args, before_ray=True)
    assert line.startswith(f"alpagasus-ray filter: judge rubric ({bad}): ") and "{output}" in line


def decisions(out: Path) -> dict[str, dict]:
    table = pads.dataset(str(out / "data"), partitioning="hive").to_table()
    return {r["row"]: r for r in table.to_pylist()}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("rubric-in") / "rows.jsonl", numbered_rows(40, 4))


def test_a_rubric_file_judges_the_run_and_is_its_identity(ray_session, rows, stand_in, tmp_path):
    """The stand-in's score is a hash of the prompt: another rubric, other scores. The
    manifest and report name the template; a rerun with the file edited is refused naming
    judge.rubric, and with the same file it finds the run done."""
    path = tmp_path / "code.txt"
    path.write_text(CODE_RUBRIC)
    sets = {"input__columns__id": "row", "output__overwrite": False}
    paper = run_filter(job_config(str(rows), str(tmp_path / "paper"), stand_in, **sets))
    out = tmp_path / "mine"
    cfg = job_config(str(rows), str(out), stand_in, **sets, judge__rubric_file=str(path))
    mine = run_filter(cfg)
    assert mine.status == "complete" and mine.rows_read == 40
    assert mine.judge["rubric"] == rubric_label(CODE_RUBRIC)
    assert mine.judge["rubric_file"] == str(path) and mine.judge["rubric_text"] == CODE_RUBRIC
    assert mine.prompt_hash == prompt_hash(CODE_RUBRIC, "prefix") != paper.prompt_hash
    scores = {k: r["score"] for k, r in decisions(out).items()}
    paper_scores = {k: r["score"] for k, r in decisions(tmp_path / "paper").items()}
    assert scores.keys() == paper_scores.keys()
    assert sum(scores[k] != paper_scores[k] for k in scores) > 30
    report = (out / "report.md").read_text()
    assert f"Rubric (from `{path}`):" in report and CODE_RUBRIC in report

    assert run_filter(cfg.model_copy(deep=True)).already_complete
    path.write_text(CODE_RUBRIC.replace("0 (wrong)", "0 (broken)"))
    edited = job_config(str(rows), str(out), stand_in, **sets, judge__rubric_file=str(path))
    with pytest.raises(PreflightError, match=r"judge.rubric was 'custom sha256:"):
        run_filter(edited)


def test_the_papers_prompt_as_a_template_scores_as_the_papers_rubric(
    ray_session, rows, tiny_judge, tmp_path
):
    """The template path feeds the real engine what the paper's rubric does: the same
    prompt spelt as a template gives the HF judge's very scores; another template does not."""
    sets = {"input__columns__id": "row", "judge__layout": "paper"}
    runs = {}
    for name, rubric in (("paper", "accuracy"), ("same", PAPER_AS_TEMPLATE), ("code", CODE_RUBRIC)):
        out = tmp_path / name
        run_filter(job_config(str(rows), str(out), tiny_judge, judge__rubric=rubric, **sets))
        runs[name] = {k: (r["score"], r["num_prompt_tokens"]) for k, r in decisions(out).items()}
    assert runs["same"] == runs["paper"]
    assert sum(runs["code"][k] != runs["paper"][k] for k in runs["paper"]) == 40
