"""A CSV file as a stream of Arrow record batches, whatever the size of its cells.

pyarrow's streaming reader parses a block of bytes at a time and a row must fit in one
block. The block starts at 1 MB; when a row does not fit, it grows fourfold (up to
1 GiB), the read starts again and skips the rows already handed on, and the file keeps
that block size for its later reads. Quoted values may span lines.

A file whose structure is broken fails with the line to look at: a row with a different
number of fields than the header (pyarrow says only that there is one), and a quote
never closed (pyarrow would read the rest of the file into that one cell). The header
check counts the file's quotes (one quick read); an odd count means a quote left open or
a stray one inside an unquoted value, and a pass of Python's ``csv`` module tells which,
and where, before anything is sent.
A header that is one column but splits on ``;``, a tab or ``|`` names the delimiter to set.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

from batchrun._errors import InputError
from batchrun.io.files import Found

FIRST_BLOCK = 1 << 20
LAST_BLOCK = 1 << 30
_OTHER_DELIMITERS = {";": "';'", "\t": "'\\t'", "|": "'|'"}
_block_sizes: dict[str, int] = {}  # file -> the block size its rows needed


def csv_options(found: Found, delimiter: str) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions]:
    """How the file is read: the block size it needed so far, its delimiter."""
    read = pacsv.ReadOptions(block_size=_block_sizes.get(found.name, FIRST_BLOCK))
    return read, pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)


def csv_header(found: Found, delimiter: str) -> list[str]:
    """The header's column names (reads the first block only)."""
    while True:
        block = _block_sizes.get(found.name, FIRST_BLOCK)
        try:
            with found.fs.open_input_stream(found.path) as stream:
                names: list[str] = _open(stream, delimiter, block).schema.names
            break
        except pa.ArrowInvalid as exc:
            _recover(found, delimiter, block, exc)
    if _odd_quotes(found):
        problem = locate_problem(found, delimiter)
        if problem:
            raise InputError(f"{found.name}: {problem}")
    if len(names) == 1:
        for other, shown in _OTHER_DELIMITERS.items():
            if other != delimiter and other in names[0]:
                raise InputError(
                    f"{found.name}: the header {names[0][:60]!r} is one column; it splits "
                    f"on {shown}: set input.delimiter = {shown}"
                )
    return names


def csv_batches(
    found: Found, delimiter: str, convert: pacsv.ConvertOptions
) -> Iterator[pa.RecordBatch]:
    """Every row of the file, as pyarrow's blocks give them."""
    handed_on = 0
    while True:
        block = _block_sizes.get(found.name, FIRST_BLOCK)
        seen = 0
        try:
            with found.fs.open_input_stream(found.path) as stream:
                for batch in _open(stream, delimiter, block, convert):
                    if seen + batch.num_rows > handed_on:
                        yield batch.slice(max(handed_on - seen, 0))
                        handed_on = seen + batch.num_rows
                    seen += batch.num_rows
        except pa.ArrowInvalid as exc:
            _recover(found, delimiter, block, exc)
            continue
        return


def _open(
    stream: pa.NativeFile, delimiter: str, block: int, convert: pacsv.ConvertOptions | None = None
) -> pacsv.CSVStreamingReader:
    read = pacsv.ReadOptions(block_size=block)
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    # pyarrow-stubs miss that open_csv takes pyarrow's own NativeFile.
    return pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)  # type: ignore[arg-type]


def _recover(found: Found, delimiter: str, block: int, exc: pa.ArrowInvalid) -> None:
    """Grow the file's block for a row that did not fit; else raise the error, located."""
    text = str(exc).splitlines()[0] if str(exc) else "unreadable"
    if "straddl" in text:  # "straddling object straddles two block boundaries"
        if block < LAST_BLOCK:
            _block_sizes[found.name] = block * 4
            return
        problem = locate_problem(found, delimiter)
        raise InputError(f"{found.name}: {problem or f'a row is over {LAST_BLOCK >> 20} MB'}")
    if text.startswith("CSV parse error"):
        raise InputError(f"{found.name}: {locate_problem(found, delimiter) or text}")
    raise exc


def _odd_quotes(found: Found) -> bool:
    """Whether the file holds an odd number of quotes (a quick read of its bytes)."""
    quotes = 0
    with found.fs.open_input_stream(found.path) as stream:
        while chunk := stream.read(8 << 20):
            quotes += chunk.count(b'"')
    return quotes % 2 == 1


def locate_problem(found: Found, delimiter: str) -> str | None:
    """The first broken row as 'line N: ...', by Python's csv module; None if none is."""
    csv.field_size_limit(max(csv.field_size_limit(), (1 << 31) - 1))
    with found.fs.open_input_stream(found.path) as stream:
        reader = csv.reader(_lines(stream), delimiter=delimiter, strict=True)
        width = None
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):
                    return f"line {start}: a quote opened in this row is never closed"
                continue  # a stray quote pyarrow reads as text: not the problem
            if not record:
                continue  # a blank line, skipped by pyarrow too
            if width is None:
                width = len(record)
            elif len(record) != width:
                return f"line {start}: {len(record)} fields, but the header has {width}"


def _lines(stream: pa.NativeFile) -> Iterator[str]:
    """The stream's text split at newlines only (as the lines a CSV row number counts)."""
    decode = codecs.getincrementaldecoder("utf-8")("replace").decode
    pending = ""
    while chunk := stream.read(1 << 20):
        *lines, pending = (pending + decode(chunk)).split("\n")
        yield from (line + "\n" for line in lines)
    pending += decode(b"", True)
    if pending:
        yield pending
