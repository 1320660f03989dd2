"""Mistakes are refused before Ray starts or the output is touched: exit code 2 and one line
on stderr that names the key or the file, in seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli_refusal, filter_args, write_cut_array
from fsspec.implementations.local import LocalFileSystem
from helpers import write_jsonl
from s3_server import start_s3_with_auth

from alpagasus_ray.core.config import build_config
from alpagasus_ray.data.formats import FileFormat
from alpagasus_ray.data.listing import Listing
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.preflight import conflicting_columns, preflight

ROWS = [
    {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
    {"instruction": "Name a colour.", "output": "Blue."},  # Alpaca: no input at all
]


def refused(capsys, tmp_path: Path, src: Path, model: Path | str, *sets: str) -> str:
    """Run the filter CLI; assert exit 2, one stderr line, no output, in seconds."""
    args = filter_args(tmp_path, src, model, *sets, config="filter: {threshold: 4.5}\n")
    err, _ = cli_refusal(capsys, args, before_ray=True)
    assert err.startswith("alpagasus-ray filter: ")
    assert not (tmp_path / "out").exists()
    return err


def test_parquet_without_the_mapped_column(capsys, tmp_path, tiny_judge):
    src = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "output": "b", "ctx": "c"}]), src)
    err = refused(capsys, tmp_path, src, tiny_judge, "input.columns.input=context")
    assert "column mapping (input.columns.input=context)" in err
    assert f"no column 'context' in {src}; its columns are: ctx, instruction, output" in err


def test_a_typo_in_the_mapping_on_json_lines(capsys, tmp_path, tiny_judge):
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    err = refused(capsys, tmp_path, src, tiny_judge, "input.columns.instruction=instrution")
    assert "(input.columns.instruction=instrution)" in err
    assert "its columns are: input, instruction, output" in err


def test_a_default_column_the_data_lacks_is_allowed(tmp_path, tiny_judge):
    src = write_jsonl(tmp_path / "rows.jsonl", [ROWS[1]])  # no `input` anywhere
    data = {"input": {"uri": str(src)}, "output": {"uri": str(tmp_path / "o")}}
    preflight(build_config(FilterJobConfig, {**data, "judge": {"model": str(tiny_judge)}}))


def test_a_json_array_is_sampled_without_reading_it_all(capsys, tmp_path, tiny_judge):
    src = tmp_path / "rows.json"
    src.write_text('[{"prompt": "a", "completion": "b"}, ' + '{"prompt": "x"}, ' * 50000 + "{}]")
    err = refused(capsys, tmp_path, src, tiny_judge)
    assert "(input.columns.instruction=instruction)" in err
    assert "its columns are: completion, prompt" in err


def test_a_cut_json_array_is_refused_with_the_parser_s_position(capsys, tmp_path, tiny_judge):
    """A half-downloaded array is a file error, like a corrupt Parquet file: not one
    `malformed_json` row standing for the records lost."""
    src, error = write_cut_array(tmp_path / "alpaca_data.json")
    err = refused(capsys, tmp_path, src, tiny_judge)
    assert err == f"alpagasus-ray filter: input file ({src}): cannot read it: {error}"
    assert "(char " in err


def test_parquet_columns_whose_types_conflict_are_found_from_footers(tmp_path):
    first, second, third = (tmp_path / f"{k}.parquet" for k in "abc")
    base = {"instruction": ["a"], "output": ["b"]}
    pq.write_table(pa.table({**base, "meta": [1], "n": pa.array([1], pa.int32())}), first)
    pq.write_table(pa.table({**base, "meta": ["one"], "n": pa.array([2], pa.int64())}), second)
    third.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")  # left to its read
    files = [str(first), str(second), str(third)]
    formats = dict.fromkeys(files, FileFormat("parquet"))
    listing = Listing(LocalFileSystem(), files, formats, [])
    assert conflicting_columns(listing) == ["meta"]  # n: promoted
    assert conflicting_columns(listing._replace(files=files[:1])) == []


def test_a_judge_path_that_does_not_exist(capsys, tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    err = refused(capsys, tmp_path, src, tmp_path / "no-such-model")
    assert err.endswith(f"judge model (judge.model): no such folder '{tmp_path / 'no-such-model'}'")


def test_a_judge_that_is_no_hub_id(capsys, tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    err = refused(capsys, tmp_path, src, "meta llama 8b!")
    assert "judge model (judge.model): 'meta llama 8b!' is neither a folder nor a hub id" in err


def test_a_judge_folder_without_a_tokenizer(capsys, tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    err = refused(capsys, tmp_path, src, empty)
    assert err.endswith(f"judge tokenizer (judge.model): no tokenizer files in '{empty}' "
                        "(tokenizer.json, ...)")  # fmt: skip
    (empty / "tokenizer.json").write_text("{not json")
    err = refused(capsys, tmp_path, src, empty)
    assert f"judge tokenizer (judge.model): cannot load '{empty}': " in err


def test_a_judge_tokenizer_without_score_digit_tokens(capsys, tmp_path):
    """Logprobs mode reads the score from single digit tokens: a tokenizer without them is
    refused at start, not after the first batch reached a replica."""
    from helpers import save_digitless_tokenizer

    folder = save_digitless_tokenizer(tmp_path / "no-digits")
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    err = refused(capsys, tmp_path, src, folder)
    said = "judge.scale [0, 5]: the judge tokenizer has no single token for the score 0"
    assert err.startswith(f"alpagasus-ray filter: judge tokenizer (judge.model): {said}")


DRIVER_PROBE = """
import json, sys
from alpagasus_ray.core.config import build_config
from alpagasus_ray.filter.config import FilterJobConfig
from alpagasus_ray.filter.preflight import preflight
from alpagasus_ray.filter.stages.vllm_score import judge_score_tokens

cfg = build_config(FilterJobConfig, json.loads(sys.argv[1]))
preflight(cfg)
tokens = judge_score_tokens(cfg.judge)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "vllm"})
print(json.dumps({"heavy": heavy, "tokens": tokens}))
"""


def test_the_driver_never_imports_torch(tmp_path, tiny_judge):
    """The driver holds what it imports for the whole run (hours at a million rows): the
    tokenizer checks run in a child, so torch and transformers never load in it."""
    import json

    from alpagasus_ray.engines.judgement import score_token_ids
    from alpagasus_ray.text.models import load_tokenizer

    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    data = {"input": {"uri": str(src)}, "output": {"uri": str(tmp_path / "out")},
            "judge": {"model": str(tiny_judge)}}  # fmt: skip
    cmd = [sys.executable, "-c", DRIVER_PROBE, json.dumps(data)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["heavy"] == []
    expected = score_token_ids(load_tokenizer(str(tiny_judge)))
    assert {int(k): v for k, v in seen["tokens"].items()} == expected


def test_a_corrupt_parquet_file_is_named(capsys, tmp_path, tiny_judge):
    src = tmp_path / "broken.parquet"
    src.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    err = refused(capsys, tmp_path, src, tiny_judge)
    assert f"input file ({src}): cannot read it" in err


def test_a_missing_input_fails_before_ray_starts(tmp_path, tiny_judge):
    """From a fresh process: the whole command fails in seconds, Ray never started."""
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    config.write_text("filter: {threshold: 4.5}\n")
    cmd = [sys.executable, "-m", "alpagasus_ray.cli", "filter", "--config", str(config),
           "--set", f"input.uri={tmp_path / 'typo.jsonl'}", "--set", f"output.uri={out}",
           "--set", f"judge.model={tiny_judge}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"alpagasus-ray filter: input (input.uri): input {tmp_path}/typo.jsonl "
                     "does not exist"]  # fmt: skip
    assert "Started a local Ray instance" not in done.stderr and not out.exists()


@pytest.mark.parametrize("model", ["Qwen/Qwen2.5-7B-Instruct", "gpt2", "org/model.v1-2_b"])
def test_hub_ids_are_well_formed(model):
    from alpagasus_ray.filter.preflight import _HUB_ID

    assert _HUB_ID.match(model)


@pytest.fixture(scope="module")
def s3_with_auth():
    server, endpoint = start_s3_with_auth()
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


def test_wrong_s3_credentials_name_the_server_error_code(
    capsys, tmp_path, tiny_judge, s3_with_auth
):
    err = refused(
        capsys, tmp_path, "s3://corpus/in/", tiny_judge,
        f"storage.endpoint_url={s3_with_auth}", "storage.access_key_id=AKIAWRONG",
        "storage.secret_access_key=wrong", "storage.region=us-east-1",
    )  # fmt: skip
    assert err.startswith("alpagasus-ray filter: input (s3://corpus/in/): InvalidAccessKeyId: "), (
        err
    )


def test_an_output_under_a_file_is_refused(capsys, tmp_path, tiny_judge):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    err = refused(capsys, tmp_path, src, tiny_judge, f"output.uri={blocker}/out")
    assert err == (
        f"alpagasus-ray filter: output (output.uri): cannot create {blocker}/out: "
        f"{blocker} is not a folder"
    )


def test_a_non_empty_output_is_refused_before_ray_starts(capsys, tmp_path, tiny_judge):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "result.parquet").write_text("earlier work")
    err = refused(capsys, tmp_path, src, tiny_judge, f"output.uri={taken}")
    assert err.endswith(f"{taken} is not empty; set output.overwrite=true to replace it")
    assert (taken / "result.parquet").read_text() == "earlier work"


def refused_apart(capsys, tmp_path: Path, src: str, out: str, judge: Path) -> tuple[str, float]:
    """`overwrite=true` into an output that overlaps the input: refused, nothing touched."""
    before = sorted(p for p in tmp_path.rglob("*") if p.name != "job.yaml")
    sets = (f"output.uri={out}", "output.overwrite=true")
    err, elapsed = cli_refusal(capsys, filter_args(tmp_path, src, judge, *sets), before_ray=True)
    assert sorted(p for p in tmp_path.rglob("*") if p.name != "job.yaml") == before
    assert err.startswith(f"alpagasus-ray filter: output (output.uri): {out} ")
    assert err.endswith("; choose an output.uri outside the input"), err
    return err, elapsed


def input_tree(tmp_path: Path) -> Path:
    """tmp_path/data/{a,b}/rows.jsonl"""
    for part in ("a", "b"):
        write_jsonl(tmp_path / "data" / part / "rows.jsonl", ROWS)
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("src", "out", "said"),
    [
        ("data", "data", "is the input {src}"),  # the input's own folder
        ("data", ".", "holds the input {src}"),  # its parent
        ("data", "data/a/filtered", "lies inside the input folder {src}"),
        ("data/a/rows.jsonl", "data/a", "holds the input {src}"),  # a single file
        ("data/*/rows.jsonl", "data", "holds the input {src}"),  # a glob's folder
        ("data/*/rows.jsonl", "data/b", "holds the input {data}/b/rows.jsonl"),  # one listed
        ("data/*/*.json*", "data/c", "lies where the input glob {src} reaches"),
    ],
)
def test_an_output_over_the_input_is_refused_before_anything_is_touched(
    capsys, tmp_path, tiny_judge, src, out, said
):
    """`overwrite` used to delete such an input before reading it."""
    data = input_tree(tmp_path)
    src, out = str(tmp_path / src), str(tmp_path / out)
    err, elapsed = refused_apart(capsys, tmp_path, src, out, tiny_judge)
    assert err.split(f"{out} ", 1)[1].startswith(said.format(data=data, src=src)), err
    print(f"refused in {elapsed:.2f} s: {err}")


def test_an_output_over_the_input_through_a_link_is_refused(capsys, tmp_path, tiny_judge):
    data = input_tree(tmp_path)
    (tmp_path / "link").symlink_to(data)
    err, _ = refused_apart(capsys, tmp_path, str(data), str(tmp_path / "link"), tiny_judge)
    assert f"{tmp_path / 'link'} is the input {data}" in err


def test_an_output_beside_a_glob_input_is_allowed(tmp_path, tiny_judge):
    """`data/*.jsonl` does not reach `data/filtered/...`: a common layout, not refused."""
    src = write_jsonl(tmp_path / "data" / "rows.jsonl", ROWS)
    data = {"input": {"uri": f"{src.parent}/*.jsonl"},
            "output": {"uri": str(src.parent / "filtered"), "overwrite": True},
            "judge": {"model": str(tiny_judge)}}  # fmt: skip
    preflight(build_config(FilterJobConfig, data))


def test_overwrite_refuses_a_folder_it_did_not_write(capsys, tmp_path, tiny_judge):
    src = write_jsonl(tmp_path / "in.jsonl", ROWS)
    theirs = tmp_path / "theirs"
    (theirs / "sub").mkdir(parents=True)
    (theirs / "sub" / "result.parquet").write_text("earlier work")
    sets = (f"output.uri={theirs}", "output.overwrite=true")
    err, elapsed = cli_refusal(capsys, filter_args(tmp_path, src, tiny_judge, *sets))
    assert err == (
        f"alpagasus-ray filter: output (output.uri): {theirs} is not empty and was not "
        "written by alpagasus-ray; choose another output.uri or empty it yourself"
    )
    assert (theirs / "sub" / "result.parquet").read_text() == "earlier work"
    print(f"refused in {elapsed:.2f} s: {err}")


def test_the_api_engine_without_its_sdk_names_the_extra(tmp_path, capsys, monkeypatch):
    """A user's install without the `api` extra: one line naming it, not a ModuleNotFoundError
    after Ray starts."""
    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` raises ImportError
    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "a", "output": "b"}])
    api = ("judge.engine=openai", "judge.api.base_url=http://127.0.0.1:9/v1")
    args = filter_args(tmp_path, src, "some-model", *api, "judge.api.api_key_env=null")
    line, _ = cli_refusal(capsys, args)
    assert line == (
        "alpagasus-ray filter: judge API (judge.engine): the API engine needs the OpenAI SDK: "
        "pip install 'alpagasus-ray[api]'"
    )
