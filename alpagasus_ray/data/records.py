"""Record files (a JSON array, JSON lines, CSV, TSV) as a stream of records, each the JSON
text of one object, with the reason it cannot be trusted when it cannot.

Bytes are decompressed (gzip, bz2 and xz by Python's own modules; zstd by pyarrow's, which
has it built in) and decoded as the file says: UTF-16 or UTF-32 by their byte-order mark,
UTF-8 otherwise, with or without a BOM. Bytes that are not UTF-8 never stop a read or
change a value: the record holding them comes out with its bytes shown as `\\udcXX`
escapes and an `invalid_text` error, which validation quarantines."""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import io
import itertools
import json
import lzma
from collections.abc import Iterator
from typing import IO, Any

from alpagasus_ray.data.formats import FileFormat

INVALID_TEXT = "invalid_text"
MALFORMED_CSV = "malformed_csv"
Record = tuple[str, str | None]  # (the record's JSON text, "<reason>: <detail>" or None)
_BOMS = (  # longest first: UTF-32 LE's BOM starts with UTF-16 LE's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
csv.field_size_limit(1 << 30)  # a cell may hold a long answer (Python's default is 128 KiB)


class Counted(io.RawIOBase):
    """A binary stream that counts the bytes read through it: how far into the file (its
    compressed bytes) a read is, which Ray's input streams cannot tell."""

    def __init__(self, f: Any):
        self.f, self.bytes = f, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.f.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes += len(data)
        return len(data)


def decompressed(raw: IO[bytes], compression: str | None) -> io.BufferedIOBase:
    """The file's bytes as a buffered stream, decompressed."""
    buffered = raw
    if not hasattr(raw, "peek"):  # what `decoded` looks for a BOM with
        buffered = io.BufferedReader(raw if isinstance(raw, io.RawIOBase) else Counted(raw))
    if compression == "gzip":
        return gzip.GzipFile(fileobj=buffered)
    if compression == "bz2":
        return bz2.BZ2File(buffered)
    if compression == "xz":
        return lzma.LZMAFile(buffered)
    if compression == "zstd":
        import pyarrow as pa

        native = pa.CompressedInputStream(pa.PythonFile(buffered, mode="r"), "zstd")
        return io.BufferedReader(Counted(native))
    return buffered


def decoded(binary: io.BufferedIOBase) -> io.TextIOWrapper:
    """The stream as text in the encoding its BOM names (UTF-8 without one). UTF-8 keeps
    bytes that are not UTF-8 as lone surrogates (`surrogateescape`), for the record that
    holds them to be quarantined; UTF-16 and UTF-32 are decoded strictly (a file that
    breaks them is a file error). `newline=""`: a parser's positions are the file's own."""
    _, encoding = _bom(binary)
    errors = "surrogateescape" if encoding.startswith("utf-8") else "strict"
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors, newline="")


@contextlib.contextmanager
def open_text(fs: Any, path: str, fmt: FileFormat) -> Iterator[io.TextIOWrapper]:
    """A record file opened through an fsspec filesystem, decompressed and decoded."""
    with fs.open(path, "rb") as raw, decoded(decompressed(raw, fmt.compression)) as text:
        yield text


def starts_array(binary: io.BufferedIOBase) -> bool:
    """Whether a JSON file's first character is `[`, from its first bytes (any BOM and
    encoding): a JSON array document, read whole before its first record."""
    head = binary.peek(256)[:256] if hasattr(binary, "peek") else b""
    bom, _ = _bom(binary)
    return head[len(bom) :].replace(b"\x00", b"").lstrip().startswith(b"[")


def _bom(binary: io.BufferedIOBase) -> tuple[bytes, str]:
    """(the byte-order mark a stream starts with, or b"", and the encoding it names)."""
    head = binary.peek(4)[:4] if hasattr(binary, "peek") else b""
    return next(((bom, name) for bom, name in _BOMS if head.startswith(bom)), (b"", "utf-8"))


def invalid_text(text: str) -> str | None:
    """Why `text` is not valid Unicode (so cannot be stored), or None when it is."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        what = (
            f"byte 0x{code - 0xDC00:02x}, which is not UTF-8,"
            if 0xDC80 <= code <= 0xDCFF
            else f"a lone surrogate (\\u{code:04x})"
        )
        return f"{INVALID_TEXT}: {what} at character {e.start} of the record"


def lone_surrogate(raw: str, record: Any) -> str | None:
    """Why a record parsed from the valid JSON text `raw` holds text that is not valid
    Unicode: only a `\\uDXXX` escape can put a lone surrogate there, so nothing else is
    looked at."""
    if "\\ud" not in raw.lower():
        return None
    return invalid_text(json.dumps(record, ensure_ascii=False))


def storable(record: str) -> Record:
    """A record as text that can be stored: itself, or, when it holds text that is not
    valid Unicode, its escaped form with the reason."""
    problem = invalid_text(record)
    if problem is None:
        return record, None
    return record.encode("utf-8", "backslashreplace").decode("utf-8"), problem


def records(text: io.TextIOWrapper, kind: str) -> Iterator[Record]:
    """The records of a decoded record file of `kind` (json, csv or tsv)."""
    if kind in ("csv", "tsv"):
        return csv_records(text, "\t" if kind == "tsv" else ",")
    return json_records(text)


def json_records(text: io.TextIOWrapper) -> Iterator[Record]:
    """JSON lines line by line, in bounded memory; a JSON array document whole (it is one
    value: memory a few times the file's size). A line is a record whether it parses or not
    (validation quarantines what does not); an array that does not parse raises (a file
    error: no record in a half-downloaded document can be trusted)."""
    head = first = ""
    while not first.strip() and (line := text.readline()):
        first, head = line, head + line
    if first.lstrip().startswith("["):
        for record in json.loads(head + text.read()):
            yield storable(json.dumps(record, ensure_ascii=False))
        return
    for line in itertools.chain([first], text):
        if line.strip():
            yield storable(line.rstrip("\r\n"))


def csv_header(text: io.TextIOWrapper, delimiter: str) -> list[str]:
    """The column names of a CSV or TSV file: its first row, each named once."""
    header = next(csv.reader(text, delimiter=delimiter), [])
    repeated = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if repeated is not None:
        raise ValueError(f"its header names column {repeated!r} twice")
    return header


def csv_records(text: io.TextIOWrapper, delimiter: str) -> Iterator[Record]:
    """Each row of a CSV or TSV file as a JSON object of its header's names and its cells,
    every cell a string as written (no type is guessed). A row whose cell count differs
    from the header's is kept as its cells, `malformed_csv`; blank lines are no rows."""
    header = csv_header(text, delimiter)
    for row in csv.reader(text, delimiter=delimiter):
        if not row:
            continue
        if len(row) != len(header):
            cells, problem = storable(json.dumps(row, ensure_ascii=False))
            detail = f"{len(row)} cells where the header has {len(header)}"
            yield cells, problem or f"{MALFORMED_CSV}: {detail}"
            continue
        yield storable(json.dumps(dict(zip(header, row, strict=True)), ensure_ascii=False))
