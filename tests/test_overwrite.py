"""`output.overwrite` replaces only an output alpagasus-ray wrote, and only its own files:
never the input, never a folder or bucket it did not write, never the user's other files.
The manifest goes first, so a half-removed output reads as unfinished, never complete."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fsspec
import pytest
from conftest import cli_refusal, filter_args, s3_client
from helpers import write_jsonl

from alpagasus_ray.cli import main
from alpagasus_ray.core.config import StorageConfig
from alpagasus_ray.data.io import MANIFEST, RUN_MARKER, filesystem, is_own_name, prepare_output
from alpagasus_ray.demo import synthetic_examples

ROWS = 12
CONFIG = (
    "judge: {min_score_mass: 0.0, batch_size: 16, num_cpus_per_replica: 0.5}\n"
    "filter: {threshold: 2.0}\n"
)
BUCKET, ROOT_BUCKET = "overwrite-test", "overwrite-root"
S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing-secret"}
USER_FILES = {"notes.txt": "mine", "mine/keep.parquet": "also mine"}


def run_cli(tmp_path: Path, src: str, out: str, judge: str, *sets: str) -> dict:
    """A real `alpagasus-ray filter` run, in-process; returns the manifest it wrote."""
    args = filter_args(tmp_path, src, judge, f"output.uri={out}", *sets, config=CONFIG)
    assert main(args) == 0
    fs, root = filesystem(out, storage(sets))
    return json.loads(fs.cat_file(f"{root}/{MANIFEST}"))


def storage(sets: tuple[str, ...]) -> StorageConfig:
    pairs = (s.split("=", 1) for s in sets if s.startswith("storage."))
    return StorageConfig(**{k.removeprefix("storage."): v for k, v in pairs})


def marked_output(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """What a finished filter run leaves (in miniature), plus the user's own files."""
    names = [MANIFEST, RUN_MARKER, "report.md", "report.json", "score_histogram.png"]
    names += ["api_spend.json", "report.md.0a1b2c3d.tmp"]  # an API judge's spend; a temp file
    files = {n: "{}" for n in names} | {"data/decision=kept/a.parquet": "x"}
    for name, text in (files | {"read_log/0.json": "{}"} | USER_FILES).items():
        if fs.protocol[0] == "file":
            fs.makedirs(f"{root}/{name}".rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(f"{root}/{name}", text.encode())


def test_overwrite_keeps_the_users_files_on_disk(ray_session, stand_in, tmp_path, caplog):
    src = write_jsonl(tmp_path / "in.jsonl", synthetic_examples(ROWS, seed=5))
    out = tmp_path / "out"
    assert run_cli(tmp_path, str(src), str(out), stand_in)["rows_read"] == ROWS
    assert all(is_own_name(p.name) for p in out.iterdir()), sorted(out.iterdir())
    for name, text in USER_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    run_id = json.loads((out / RUN_MARKER).read_text())["run_id"]
    with caplog.at_level(logging.INFO, logger="alpagasus_ray.data.io"):
        again = run_cli(tmp_path, str(src), str(out), stand_in, "output.overwrite=true")
    assert again["rows_read"] == ROWS == sum(again["counts"].values())
    assert json.loads((out / RUN_MARKER).read_text())["run_id"] != run_id  # a new run
    assert {n: (out / n).read_text() for n in USER_FILES} == USER_FILES
    left = [r.getMessage() for r in caplog.records if "left what" in r.getMessage()]
    assert left == [f"overwrite: left what alpagasus-ray did not write in {out}: "
                    "['mine', 'notes.txt']"]  # fmt: skip


def test_the_manifest_goes_first_and_the_marker_last(tmp_path):
    fs = fsspec.filesystem("file", skip_instance_cache=True)
    root = str(tmp_path / "out")
    marked_output(fs, root)
    removed: list[str] = []
    rm = fs.rm
    fs.rm = lambda path, recursive=False: removed.append(path) or rm(path, recursive=recursive)
    prepare_output(fs, root, overwrite=True)
    names = [Path(p).name for p in removed]
    assert names[0] == MANIFEST and names[-1] == RUN_MARKER, names
    assert sorted(names[1:-1]) == ["api_spend.json", "data", "read_log", "report.json",
                                   "report.md", "report.md.0a1b2c3d.tmp",
                                   "score_histogram.png"]  # fmt: skip
    assert sorted(p.name for p in Path(root).iterdir()) == ["mine", "notes.txt"]


def test_a_folder_without_the_marker_is_never_removed(tmp_path):
    """What the evaluation (which has no preflight) meets, too."""
    fs = fsspec.filesystem("file")
    root = tmp_path / "theirs"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "data.parquet").write_text("theirs")
    with pytest.raises(FileExistsError, match="was not written by alpagasus-ray"):
        prepare_output(fs, str(root), overwrite=True)
    assert (root / "sub" / "data.parquet").read_text() == "theirs"


# ---------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    """A bucket with a small input, and the `--set`s that point a job at it."""
    client = s3_client(s3_endpoint)
    for bucket in (BUCKET, ROOT_BUCKET):
        client.create_bucket(Bucket=bucket)
    storage_cfg = StorageConfig(endpoint_url=s3_endpoint, region="us-east-1", **S3_KEYS)
    fs, _ = filesystem(f"s3://{BUCKET}", storage_cfg)
    rows = synthetic_examples(ROWS, seed=6)
    fs.pipe_file(f"{BUCKET}/in/rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    sets = [f"storage.endpoint_url={s3_endpoint}", "storage.region=us-east-1"]
    sets += [f"storage.{k}={v}" for k, v in S3_KEYS.items()]
    return fs, storage_cfg, tuple(sets)


def test_overwrite_keeps_the_users_keys_on_s3(ray_session, stand_in, tmp_path, s3):
    fs, _, sets = s3
    src, out = f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out"
    first = run_cli(tmp_path, src, out, stand_in, *sets)
    assert first["rows_read"] == ROWS
    for name, text in USER_FILES.items():
        fs.pipe_file(f"{BUCKET}/out/{name}", text.encode())
    again = run_cli(tmp_path, src, out, stand_in, *sets, "output.overwrite=true")
    assert again["rows_read"] == ROWS == sum(again["counts"].values())
    fs.invalidate_cache()
    assert {n: fs.cat_file(f"{BUCKET}/out/{n}").decode() for n in USER_FILES} == USER_FILES
    assert fs.cat_file(f"{BUCKET}/in/rows.jsonl")  # the input, untouched


@pytest.mark.parametrize("uri", ["s3://{b}", "s3://{b}/"])
def test_a_bucket_root_is_never_removed(s3, uri):
    _, storage_cfg, _ = s3
    fs, root = filesystem(uri.format(b=ROOT_BUCKET), storage_cfg)
    marked_output(fs, ROOT_BUCKET)
    prepare_output(fs, root, overwrite=True)
    fs.invalidate_cache()
    assert fs.exists(ROOT_BUCKET)
    assert sorted(fs.find(ROOT_BUCKET)) == [f"{ROOT_BUCKET}/mine/keep.parquet",
                                            f"{ROOT_BUCKET}/notes.txt"]  # fmt: skip
    with pytest.raises(FileExistsError, match="was not written by alpagasus-ray"):
        prepare_output(fs, root, overwrite=True)  # no marker now: the user's, refused
    fs.invalidate_cache()
    assert fs.cat_file(f"{ROOT_BUCKET}/notes.txt") == b"mine"
    fs.rm(fs.find(ROOT_BUCKET))


@pytest.mark.parametrize(
    ("out", "said"),
    [
        ("s3://{b}/in", "is the input s3://{b}/in/"),
        ("s3://{b}", "holds the input s3://{b}/in/"),  # the bucket root
        ("s3://{b}/", "holds the input s3://{b}/in/"),
        ("s3://{b}/in/filtered", "lies inside the input folder s3://{b}/in/"),
        ("s3://{b}/in/rows.jsonl/x", "lies inside the input folder s3://{b}/in/"),
    ],
)
def test_an_s3_output_over_the_input_is_refused(capsys, tmp_path, stand_in, s3, out, said):
    fs, _, sets = s3
    out = out.format(b=BUCKET)
    args = filter_args(tmp_path, f"s3://{BUCKET}/in/", stand_in, *sets,
                       f"output.uri={out}", "output.overwrite=true")  # fmt: skip
    err, elapsed = cli_refusal(capsys, args)
    assert err == (f"alpagasus-ray filter: output (output.uri): {out} {said.format(b=BUCKET)}; "
                   "choose an output.uri outside the input")  # fmt: skip
    fs.invalidate_cache()
    assert fs.exists(f"{BUCKET}/in/rows.jsonl")
    print(f"refused in {elapsed:.2f} s: {err}")
