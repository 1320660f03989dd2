"""Every input file read whole, in its own format, or refused by name: files made by the
libraries that make them in real life (gzip, bz2, lzma, zstd, csv, datasets' save_to_disk,
Arrow IPC), local and on S3; encodings by their BOM; text that is not valid Unicode
quarantined as it was read, never changed and never ending the job."""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import S3_CREDENTIALS, cli_refusal, filter_args, job_config, s3_client

from alpagasus_ray.core.config import InputConfig, StorageConfig
from alpagasus_ray.data.io import filesystem
from alpagasus_ray.data.listing import list_input_files
from alpagasus_ray.data.schema import READ_ROW, READ_SOURCE
from alpagasus_ray.demo import synthetic_examples
from alpagasus_ray.filter.job import run_filter

ROWS = synthetic_examples(48, seed=11)
FIELDS = ("instruction", "input", "output")


def _lines(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


def _delimited(rows: list[dict[str, Any]], dialect: str) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, dialect=dialect)
    writer.writeheader()
    writer.writerows({k: r[k] for k in FIELDS} for r in rows)
    return text.getvalue().encode()


# Each record file as its maker writes it: (name, bytes, the rows it holds).
def record_files() -> list[tuple[str, bytes, list[dict[str, Any]]]]:
    chunks = [ROWS[i : i + 4] for i in range(0, len(ROWS), 4)]
    return [
        ("plain.jsonl", _lines(chunks[0]), chunks[0]),
        ("lines.jsonl.gz", gzip.compress(_lines(chunks[1])), chunks[1]),
        ("lines.jsonl.zst", _zstd(_lines(chunks[2])), chunks[2]),
        ("lines.jsonl.bz2", bz2.compress(_lines(chunks[3])), chunks[3]),
        ("lines.jsonl.xz", lzma.compress(_lines(chunks[4])), chunks[4]),
        ("array.json.gz", gzip.compress(json.dumps(chunks[5]).encode()), chunks[5]),
        ("bom.json", codecs.BOM_UTF8 + json.dumps(chunks[6]).encode(), chunks[6]),
        ("utf16.json", json.dumps(chunks[7], ensure_ascii=False).encode("utf-16"), chunks[7]),
        ("bom.jsonl", codecs.BOM_UTF8 + _lines(chunks[8]), chunks[8]),
        ("utf32.jsonl", _lines(chunks[9]).decode().encode("utf-32"), chunks[9]),
        ("table.csv", _delimited(chunks[10], "excel"), chunks[10]),
        ("table.tsv.gz", gzip.compress(_delimited(chunks[11], "excel-tab")), chunks[11]),
    ]


def write_corpus(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The record files in `folder` (one in a subfolder), beside what Spark and Hadoop
    leave there; the rows each holds, by path."""
    made = {}
    for i, (name, data, rows) in enumerate(record_files()):
        path = folder / ("nested" if i % 5 == 4 else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        made[str(path)] = rows
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-0.crc").write_bytes(b"\x00\x01")
    return made


def read_back(root: str, storage: StorageConfig | None = None) -> dict[tuple[str, int], dict]:
    """Every row of a finished output by (source, source_row), read as readers read it:
    the files its committed manifest lists."""
    from alpagasus_ray.data.io import read_output_table
    from alpagasus_ray.filter.manifest import committed, listed_files

    fs, path = filesystem(root, storage or StorageConfig())
    table = read_output_table(fs, path, listed_files(path, committed(fs, path, root)))
    return {(r["source"], r["source_row"]): r for r in table.to_pylist()}


def assert_rows_as_made(made: dict[str, list[dict]], rows: dict[tuple[str, int], dict]) -> None:
    for path, expected in made.items():
        for i, record in enumerate(expected):
            got = rows[(path, i)]
            assert {k: got[k] for k in FIELDS} == {k: record[k] for k in FIELDS}, (path, i)
    assert len(rows) == sum(len(v) for v in made.values())


def test_listing_names_every_file_by_its_format(tmp_path):
    made = write_corpus(tmp_path / "in")
    listing = list_input_files(InputConfig(uri=str(tmp_path / "in")), StorageConfig())
    assert sorted(listing.files) == sorted(made)
    kinds = {Path(p).name: f.name for p, f in listing.formats.items()}
    assert kinds["lines.jsonl.zst"] == "json+zstd" and kinds["table.tsv.gz"] == "tsv+gzip"
    assert kinds["table.csv"] == "csv" and kinds["lines.jsonl.xz"] == "json+xz"
    assert listing.skipped == []


def test_a_file_of_no_format_read_is_refused_by_name_or_skipped_and_listed(
    capsys, tmp_path, stand_in
):
    write_corpus(tmp_path / "in")
    stray = tmp_path / "in" / "notes.xlsx"
    stray.write_bytes(b"PK\x03\x04 not a sheet we read")
    line, _ = cli_refusal(capsys, filter_args(tmp_path, tmp_path / "in", stand_in), True)
    assert line.startswith(f"alpagasus-ray filter: input (input.uri): {stray}: not an input format")
    assert "input.on_unreadable_file=skip" in line
    skip = InputConfig(uri=str(tmp_path / "in"), on_unreadable_file="skip")
    listing = list_input_files(skip, StorageConfig())
    assert [r["path"] for r in listing.skipped] == [str(stray)]
    assert str(stray) not in listing.files
    only = InputConfig(uri=str(stray), on_unreadable_file="skip")
    with pytest.raises(FileNotFoundError, match=f"1 of no input format, e.g. {stray}"):
        list_input_files(only, StorageConfig())


def test_a_folder_mixing_columnar_and_record_files_is_refused_naming_one_of_each(
    capsys, tmp_path, stand_in
):
    write_corpus(tmp_path / "in")
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), tmp_path / "in" / "more.parquet")
    line, _ = cli_refusal(capsys, filter_args(tmp_path, tmp_path / "in", stand_in), True)
    assert "mixes columnar files" in line and "more.parquet" in line


def test_every_record_format_is_read_whole_with_its_text_unchanged(ray_session, tmp_path, stand_in):
    made = write_corpus(tmp_path / "in")
    cfg = job_config(str(tmp_path / "in"), str(tmp_path / "out"), stand_in)
    manifest = run_filter(cfg)
    assert manifest.status == "complete" and manifest.rows_read == len(ROWS)
    assert manifest.counts["quarantined"] == 0
    assert_rows_as_made(made, read_back(str(tmp_path / "out")))
    listed = {f["path"]: (f["format"], f["rows"]) for f in manifest.input_files}
    assert listed == {
        path: (list_input_files(cfg.input, cfg.storage).formats[path].name, len(rows))
        for path, rows in made.items()
    }


def test_a_datasets_folder_and_an_arrow_file_are_read_as_their_makers_wrote_them(
    ray_session, tmp_path, stand_in
):
    import datasets

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(ROWS[:30]), test=datasets.Dataset.from_list(ROWS[30:40])
    )
    dd.save_to_disk(str(tmp_path / "in" / "hub"), max_shard_size="2KB")
    with pa.OSFile(str(tmp_path / "in" / "extra.arrow"), "wb") as sink:
        table = pa.Table.from_pylist(ROWS[40:])
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    listing = list_input_files(InputConfig(uri=str(tmp_path / "in")), StorageConfig())
    shards = [p for p in listing.files if "/hub/train/" in p]
    assert len(shards) > 1  # several shards, each read
    assert all(f.name == "arrow" for f in listing.formats.values())
    manifest = run_filter(job_config(str(tmp_path / "in"), str(tmp_path / "out"), stand_in))
    assert manifest.status == "complete" and manifest.rows_read == len(ROWS)
    assert manifest.counts["quarantined"] == 0
    got = {(r["instruction"], r["output"]) for r in read_back(str(tmp_path / "out")).values()}
    assert got == {(r["instruction"], r["output"]) for r in ROWS}


def test_text_that_is_not_unicode_is_quarantined_as_read_and_the_job_goes_on(
    ray_session, tmp_path, stand_in
):
    good = [json.dumps(r).encode() for r in ROWS[:18]]
    bad_bytes = b'{"instruction": "caf\xe9", "input": "", "output": "ok"}'
    lone = b'{"instruction": "x \\ud800 y", "input": "", "output": "ok"}'
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b"\n".join([*good[:9], bad_bytes, *good[9:], lone]) + b"\n")
    rows = [{"instruction": "caf\udce9", "input": "", "output": "ok"}]
    cells = _delimited(ROWS[18:20], "excel") + "caf\xe9,,ok\n".encode("latin-1")
    (folder / "b.csv").write_bytes(cells)
    manifest = run_filter(job_config(str(folder), str(tmp_path / "out"), stand_in))
    assert manifest.status == "complete" and manifest.rows_read == 18 + 2 + 2 + len(rows)
    out = read_back(str(tmp_path / "out"))
    quarantined = {k: r for k, r in out.items() if r["decision"] == "quarantined"}
    assert set(quarantined) == {(str(folder / "a.jsonl"), 9), (str(folder / "a.jsonl"), 19),
                                (str(folder / "b.csv"), 2)}  # fmt: skip
    assert all(r["reason"] == "invalid_text" for r in quarantined.values())
    assert (
        "byte 0xe9, which is not UTF-8"
        in quarantined[(str(folder / "a.jsonl"), 9)]["reason_detail"]
    )
    assert "\\udce9" in quarantined[(str(folder / "a.jsonl"), 9)]["reason_detail"]
    assert "lone surrogate (\\ud800)" in quarantined[(str(folder / "a.jsonl"), 19)]["reason_detail"]
    kept_texts = {r["instruction"] for r in out.values() if r["decision"] != "quarantined"}
    assert kept_texts == {r["instruction"] for r in ROWS[:20]}


def test_record_files_on_s3_are_read_as_on_disk(ray_session, tmp_path, stand_in, s3_endpoint):
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="formats")
    made = {}
    for name, data, rows in record_files():
        client.put_object(Bucket="formats", Key=f"in/{name}", Body=data)
        made[f"formats/in/{name}"] = rows
    client.put_object(Bucket="formats", Key="in/_SUCCESS", Body=b"")
    creds = {"storage__endpoint_url": s3_endpoint, **S3_CREDENTIALS}
    cfg = job_config("s3://formats/in/", "s3://formats/out", stand_in, **creds)
    manifest = run_filter(cfg)
    assert manifest.status == "complete" and manifest.rows_read == len(ROWS)
    assert manifest.counts["quarantined"] == 0
    assert_rows_as_made(made, read_back("s3://formats/out", cfg.storage))
    fs, _ = filesystem("s3://formats/out", cfg.storage)
    assert fs.exists("formats/out/manifest.json")


@pytest.mark.parametrize("name", [name for name, _, _ in record_files()])
def test_each_record_file_reads_block_by_block_as_its_maker_wrote_it(ray_session, tmp_path, name):
    """The datasource's own block reader, file by file, as a read task runs it (the
    datasource puts its path list in Ray's object store: the test holds the session)."""
    from alpagasus_ray.data.sources import InputDatasource

    data, rows = next((d, r) for n, d, r in record_files() if n == name)
    path = tmp_path / name
    path.write_bytes(data)
    source = InputDatasource([str(path)], rows_per_block=5)
    with pa.OSFile(str(path), "rb") as f:
        tables = list(source._blocks(f, str(path)))
    table = pa.concat_tables(tables)
    assert table.column(READ_ROW).to_pylist() == list(range(len(rows)))
    assert set(table.column(READ_SOURCE).to_pylist()) == {str(path)}
    assert [json.loads(t) for t in table.column("_json").to_pylist()] == [
        {k: r[k] for k in (FIELDS if name.startswith("table") else r)} for r in rows
    ]


def _extras(i: int) -> dict[str, Any]:
    """The user's own columns of row i: one JSON kind each, but `rating` (ints and floats:
    numbers), `meta` (objects: JSON text) and `mixed` (a string, then a number)."""
    return {
        **{"category": f"cat{i % 3}", "n": i, "tags": ["a", f"t{i}"], "flag": i % 2 == 0},
        **{"rating": 4 if i % 2 else 4.5, "meta": {"k": i}, "mixed": "x" if i < 5 else i},
    }


def test_the_users_columns_keep_their_values_and_types(ray_session, tmp_path, stand_in):
    rows = [{**r, **_extras(i)} for i, r in enumerate(ROWS[:24])]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_lines(rows[:12]))
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(_lines(rows[12:])))
    out = tmp_path / "out"
    manifest = run_filter(job_config(str(folder), str(out), stand_in, judge__batch_size=4))
    assert manifest.status == "complete" and manifest.json_text_columns == ["meta", "mixed"]
    stored = read_back(str(out))
    schema = pq.read_schema(next(out.glob("data/decision=*/*.parquet")))
    types = {n: str(schema.field(n).type) for n in ("category", "n", "tags", "flag", "rating")}
    assert types == {"category": "string", "n": "int64", "tags": "list<element: string>",
                     "flag": "bool", "rating": "double"}  # fmt: skip
    by_n = {r["n"]: r for r in stored.values()}
    for i, row in enumerate(rows):
        got = by_n[i]
        assert [got[k] for k in ("category", "n", "tags", "flag")] == [
            row[k] for k in ("category", "n", "tags", "flag")
        ]
        assert got["rating"] == row["rating"]
        assert json.loads(got["meta"]) == row["meta"] and json.loads(got["mixed"]) == row["mixed"]


def test_export_writes_the_users_values_as_read(ray_session, tmp_path, stand_in, tiny_judge):
    """Exported with a real judge (the stand-in's output is refused by export)."""
    from alpagasus_ray.filter.export import export

    rows = [{**r, **_extras(i)} for i, r in enumerate(ROWS[:12])]
    path = tmp_path / "in.jsonl"
    path.write_bytes(_lines(rows))
    out = tmp_path / "out"
    run_filter(job_config(str(path), str(out), tiny_judge, filter__threshold=0.0))
    export(str(out), "alpaca", str(tmp_path / "all.json"), "all", extra_columns=True)
    got = {r["n"]: r for r in json.loads((tmp_path / "all.json").read_text())}
    assert [got[i] for i in range(len(rows))] == [
        {**{k: r[k] for k in FIELDS}, **_extras(i)} for i, r in enumerate(rows)
    ]


def test_csv_columns_are_strings_and_a_limited_run_carries_json_text(
    ray_session, tmp_path, stand_in
):
    text = io.StringIO()
    writer = csv.DictWriter(text, [*FIELDS, "category", "n"])
    writer.writeheader()
    writer.writerows({**{k: r[k] for k in FIELDS}, "category": "c", "n": i}
                     for i, r in enumerate(ROWS[:10]))  # fmt: skip
    (tmp_path / "t.csv").write_text(text.getvalue())
    manifest = run_filter(job_config(str(tmp_path / "t.csv"), str(tmp_path / "out"), stand_in))
    assert manifest.json_text_columns == []
    got = read_back(str(tmp_path / "out")).values()
    assert sorted(r["n"] for r in got) == sorted(str(i) for i in range(10))  # cells: strings
    limited = job_config(str(tmp_path / "t.csv"), str(tmp_path / "cut"), stand_in, input__limit=5)
    assert run_filter(limited).json_text_columns == ["category", "n"]


def test_a_small_input_is_scanned_in_the_driver_as_ray_would_scan_it(ray_session, tmp_path):
    """`carried.scan_kinds`: up to SMALL_INPUT_BYTES the kinds are found in this process;
    beyond, by a Ray pass. Both see the same records, broken ones included."""
    from alpagasus_ray.data.read import read_input
    from alpagasus_ray.filter.carried import carried_kinds, consumed, scanned_here

    rows = [{**r, **_extras(i)} for i, r in enumerate(ROWS[:24])]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(_lines(rows[:12]) + b"{broken\n")
    (folder / "b.json.gz").write_bytes(gzip.compress(json.dumps(rows[12:]).encode()))
    (folder / "c.csv").write_bytes(_delimited(ROWS[:3], "excel"))
    cfg = InputConfig(uri=str(folder))
    listing = list_input_files(cfg, StorageConfig())
    keys = consumed(cfg.columns)
    here = scanned_here(listing, keys)
    assert here == carried_kinds(
        read_input(cfg, StorageConfig(), 0.25, 8, None, listing), keys, 0.25
    )
    assert here == {"category": "str", "n": "int", "tags": "list:str", "flag": "bool",
                    "rating": "float", "meta": "object", "mixed": "mixed"}  # fmt: skip
