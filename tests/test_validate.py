"""Validation: column mapping, stable ids, and a quarantine reason for every bad row."""

import json

import pyarrow as pa
import pytest

from alpagasus_ray.core.config import ColumnMap
from alpagasus_ray.core.errors import UnreadableInputError
from alpagasus_ray.data.schema import OUTPUT_SCHEMA, RAW_JSON, READ_ROW, READ_SOURCE
from alpagasus_ray.data.sources import InputDatasource
from alpagasus_ray.filter.stages import ValidateStage


def json_table(records: list) -> pa.Table:
    raws = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return pa.table({RAW_JSON: raws, READ_SOURCE: ["f.jsonl"] * len(raws)})


def by_instruction(table: pa.Table) -> dict:
    return {r["instruction"]: r for r in table.to_pylist()}


def test_every_kind_of_bad_row_is_quarantined_with_its_reason():
    table = json_table(
        [
            {"instruction": "ok", "input": "", "output": "fine"},
            {"instruction": "missing output", "input": ""},
            {"instruction": "null output", "output": None},
            {"instruction": "number output", "output": 42},
            {"instruction": "blank output", "output": "   "},
            {"instruction": "", "output": "x"},
            {"instruction": "list input", "input": ["a"], "output": "x"},
            '{"instruction": "broken',
            "[1, 2]",
        ]
    )
    out = ValidateStage(ColumnMap())(table)
    rows = out.to_pylist()
    assert len(rows) == 9
    reasons = [(r["instruction"], r["decision"], r["reason"]) for r in rows]
    assert reasons == [
        ("ok", None, None),
        ("missing output", "quarantined", "missing_field"),
        ("null output", "quarantined", "null_field"),
        ("number output", "quarantined", "non_string_field"),
        ("blank output", "quarantined", "empty_field"),
        ("", "quarantined", "empty_field"),
        ("list input", "quarantined", "non_string_field"),
        (None, "quarantined", "malformed_json"),
        (None, "quarantined", "not_an_object"),
    ]
    assert all(r["reason_detail"] for r in rows[1:])
    assert "broken" in rows[7]["reason_detail"]
    assert all(r["id"] and r["source"] == "f.jsonl" for r in rows)


def test_missing_or_null_input_means_empty_input():
    out = ValidateStage(ColumnMap())(
        json_table(
            [
                {"instruction": "a", "output": "b"},
                {"instruction": "c", "input": None, "output": "d"},
            ]
        )
    )
    assert [(r["input"], r["decision"]) for r in out.to_pylist()] == [("", None), ("", None)]


def test_column_mapping_extras_and_collisions():
    cols = ColumnMap(instruction="instruction", input="context", output="response")
    rec = {
        "instruction": "Q",
        "context": "C",
        "response": "R",
        "category": "qa",
        "score": 9,
        "meta": {"k": [1, 2]},
    }
    row = ValidateStage(cols)(json_table([rec])).to_pylist()[0]
    assert (row["instruction"], row["input"], row["output"]) == ("Q", "C", "R")
    # Carried keys are JSON text (`json_text`), whatever their JSON shape.
    assert row["category"] == '"qa"' and json.loads(row["meta"]) == {"k": [1, 2]}
    assert row["orig_score"] == "9"  # an input column named like one of ours is kept, renamed
    assert "context" not in row and "response" not in row


def test_ids_are_content_hashes_or_the_configured_column():
    rec = {"instruction": "a", "input": "", "output": "b"}
    first = ValidateStage(ColumnMap())(json_table([rec, rec])).column("id").to_pylist()
    again = ValidateStage(ColumnMap())(json_table([rec])).column("id").to_pylist()
    assert first[0] == first[1] == again[0] and len(first[0]) == 32
    other = ValidateStage(ColumnMap())(json_table([{**rec, "output": "c"}])).column("id")
    assert other.to_pylist()[0] != first[0]

    cols = ColumnMap(id="uid")
    out = ValidateStage(cols)(json_table([{**rec, "uid": 7}, rec])).to_pylist()
    assert out[0]["id"] == "7" and out[0]["decision"] is None and out[0]["uid"] == "7"
    assert out[1]["decision"] == "quarantined" and out[1]["reason"] == "missing_field"


def test_parquet_rows_keep_their_arrow_columns_untouched():
    table = pa.table(
        {
            "instruction": ["a", None],
            "input": ["", ""],
            "output": ["b", "c"],
            "when": pa.array([1, 2], type=pa.timestamp("ms")),
            "tags": [["x"], []],
            "source": ["alpaca", "dolly"],  # a data column named like ours
            "path": ["a/b", "c/d"],  # a data column, carried as it is
            READ_SOURCE: ["p.parquet", "p.parquet"],  # the file and positions our reader adds
            READ_ROW: pa.array([7, 8], pa.int64()),
        }
    )
    out = ValidateStage(ColumnMap())(table)
    assert out.column("source").to_pylist() == ["p.parquet", "p.parquet"]
    assert out.column("source_row").to_pylist() == [7, 8]
    assert out.column("orig_source").to_pylist() == ["alpaca", "dolly"]
    assert out.column("path").to_pylist() == ["a/b", "c/d"]
    assert READ_SOURCE not in out.column_names and READ_ROW not in out.column_names
    assert out.schema.field("when").type == pa.timestamp("ms")
    assert out.column("tags").to_pylist() == [["x"], []]
    assert out.column("decision").to_pylist() == [None, "quarantined"]
    assert out.column("reason").to_pylist() == [None, "null_field"]
    for field in OUTPUT_SCHEMA:
        if field.name in out.column_names:
            assert out.schema.field(field.name).type == field.type


def test_json_extras_have_one_type_whatever_a_block_holds():
    """Blocks are validated apart: a key that is an int in one block and a string, a dict or
    null in others must still be one column type, or the blocks cannot be joined."""
    values = [7, "seven", {"k": [1, "a"]}, [1, 2.5], True, None]
    blocks = [
        ValidateStage(ColumnMap())(json_table([{"instruction": "a", "output": "b", "meta": v}]))
        for v in values
    ]
    assert {b.schema.field("meta").type for b in blocks} == {pa.string()}
    got = pa.concat_tables(blocks).column("meta").to_pylist()
    assert [None if m is None else json.loads(m) for m in got] == values
    assert got[1] == '"seven"' and got[-1] is None  # null stays null, not "null"
    bad = ValidateStage(ColumnMap())(json_table([{"instruction": "a", "meta": 1}])).to_pylist()
    assert bad[0]["reason"] == "missing_field" and bad[0]["meta"] == "1"  # quarantined: same


def test_parquet_columns_named_as_json_are_carried_as_json_text():
    """A column whose type differs across files (`preflight.conflicting_columns`)."""
    table = pa.table({"instruction": ["a", "b"], "output": ["c", "d"], "meta": [3, None]})
    table = table.append_column("source", pa.array([1, 2]))
    out = ValidateStage(ColumnMap(), ["meta", "source"])(table)
    assert out.column("meta").to_pylist() == ["3", None]
    assert out.column("orig_source").to_pylist() == ["1", "2"]  # renamed, then as JSON text
    plain = ValidateStage(ColumnMap())(table)
    assert plain.schema.field("meta").type == pa.int64()  # otherwise its Parquet type


def test_parquet_with_a_non_string_column_quarantines_each_row():
    table = pa.table({"instruction": [1, 2], "input": ["", ""], "output": ["b", "c"]})
    out = ValidateStage(ColumnMap())(table).to_pylist()
    assert [r["reason"] for r in out] == ["non_string_field"] * 2


def read_records(path, rows_per_block: int = 2) -> list[pa.Table]:
    """The blocks the JSON datasource yields for one file, read as a stream (the datasource
    puts its path list in Ray's object store: callers hold the Ray session)."""
    from pyarrow.fs import LocalFileSystem

    source = InputDatasource([str(path)], rows_per_block=rows_per_block)
    with LocalFileSystem().open_input_stream(str(path)) as f:
        return list(source._read_stream(f, str(path)))


def test_json_files_are_split_into_records(ray_session, tmp_path):
    array = tmp_path / "x.json"
    array.write_text("\n  " + json.dumps([{"a": 1}, {"a": 2}, {"a": 3}]))
    blocks = read_records(array)
    assert [b.num_rows for b in blocks] == [2, 1]  # bounded blocks, even from one document
    assert pa.concat_tables(blocks).column(RAW_JSON).to_pylist() == [
        '{"a": 1}',
        '{"a": 2}',
        '{"a": 3}',
    ]
    lines = tmp_path / "x.jsonl"
    lines.write_bytes(b'{"a": 1}\n\n{"a": 2\r\n{"a": 3}\n{"a": 4}')
    blocks = read_records(lines)
    assert [b.num_rows for b in blocks] == [2, 2]
    rows = pa.concat_tables(blocks).to_pylist()
    assert [r[RAW_JSON] for r in rows] == ['{"a": 1}', '{"a": 2', '{"a": 3}', '{"a": 4}']
    assert {r[READ_SOURCE] for r in rows} == {str(lines)}
    assert [r[READ_ROW] for r in rows] == [0, 1, 2, 3]  # positions count records, not lines
    broken = tmp_path / "y.json"
    broken.write_text('\r\n[{"a": 1},\r\n {"a": 2')
    # A broken array is a file error, at the parser's position in the file (CRLF and all).
    with pytest.raises(UnreadableInputError) as caught:
        read_records(broken)
    assert str(caught.value) == (
        f"input file ({broken}): cannot read it: "
        "JSONDecodeError: Expecting ',' delimiter: line 3 column 9 (char 22)"
    )


def test_a_pass_over_the_input_gives_each_carried_key_one_type():
    """`filter/carried.py`: kinds merged over every row give the column's type, in every
    block alike; mixed kinds and objects are JSON text; without a pass, everything is."""
    from alpagasus_ray.filter.carried import KindsStage, kind_of, merged

    records = [
        {"instruction": "a", "output": "b", "n": 1, "x": 1.5, "tags": ["t"], "o": {"k": 1}},
        {"instruction": "a", "output": "b", "n": 2, "x": 2, "tags": [], "o": None, "m": "s"},
        {"instruction": "a", "output": "b", "n": None, "m": 3, "big": 2**70},
    ]
    raw = KindsStage(frozenset({"instruction", "output"}))(json_table(records))
    kinds = {k: merged(set(v)) for k, v in json.loads(raw.column("kinds")[0].as_py()).items()}
    assert kinds == {"n": "int", "x": "float", "tags": "list:str", "o": "object",
                     "m": "mixed", "big": "mixed"}  # fmt: skip
    assert kind_of([1, "a"]) == "list:mixed" and merged({"list:int", "list:null"}) == "list:int"
    blocks = [ValidateStage(ColumnMap(), carried_kinds=kinds)(json_table([r])) for r in records]
    for name, typ in (("n", pa.int64()), ("x", pa.float64()), ("tags", pa.list_(pa.string()))):
        assert {b.schema.field(name).type for b in blocks if name in b.column_names} == {typ}
    assert {b.schema.field("m").type for b in blocks if "m" in b.column_names} == {pa.string()}
    assert [b.column("m").to_pylist() for b in blocks[1:]] == [['"s"'], ["3"]]  # JSON text
    assert pa.concat_tables(blocks, promote_options="default").column("n").to_pylist() == [
        1,
        2,
        None,
    ]
