"""CSV at its edges: cells of any size, values over lines, broken structure named by line,
another delimiter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import batchrun_env, run_batchrun, write_job

from batchrun._errors import InputError, JobError
from batchrun.io import csvfile
from batchrun.io.input import open_input, validate_keys
from batchrun.job.config import InputConfig, Job, OutputConfig, RequestConfig
from batchrun.job.load import load_job

BIG = 65 << 20  # a 65 MB cell: over 64 times pyarrow's first block


def make_job(path: Path, delimiter: str = ",") -> Job:
    return Job(
        name="t",
        input=InputConfig(path=str(path), id_column="id", delimiter=delimiter),
        request=RequestConfig(model="m", prompt="{text}"),
        output=OutputConfig(path="out.parquet"),
    )


def read_error(path: Path, delimiter: str = ",") -> str:
    with pytest.raises(InputError) as info:
        table = open_input(make_job(path, delimiter))
        validate_keys(table, make_job(path, delimiter))
        list(table.batches())
    return str(info.value)


def test_a_cell_of_65_mb_is_read_streamed_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(b"id,text,doc\n")
        f.writelines(b"r%d,short,%s\n" % (i, b"y" * 200) for i in range(20_000))  # ~4 MB
        f.write(b'big,"a long document",' + b'"' + b"x" * BIG + b'"\n')
        f.write(b"last,after it,z\n")
    table = open_input(make_job(path))
    sizes, docs = [], {}
    for batch in table.batches(4096):
        sizes.append(batch.num_rows)
        ids, texts = batch.column("id").to_pylist(), batch.column("doc").to_pylist()
        for key, doc in zip(ids, texts, strict=True):
            if key in ("big", "last"):
                docs[key] = doc
    assert sum(sizes) == 20_002 and table.count_rows() == 20_002
    assert len(docs["big"]) == BIG and docs["last"] == "z"
    # Streamed: the block grew to fit the row (x4 steps from 1 MB), not to hold the file.
    block = csvfile.csv_options(table.files[0].found, ",")[0].block_size
    assert csvfile.FIRST_BLOCK < block <= 4 * BIG and len(sizes) > 1


def test_values_over_lines_across_block_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    rows = [f'r{i},"line one\nline ""two"", {i}"\n' for i in range(60_000)]  # ~2 MB
    path.write_text("id,text\n" + "".join(rows), encoding="utf-8")
    texts = [t for b in open_input(make_job(path)).batches() for t in b.column("text").to_pylist()]
    assert len(texts) == 60_000 and texts[-1] == 'line one\nline "two", 59999'


def test_an_unclosed_quote_is_named_by_line_not_swallowed(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('id,channel,text\nD0,chat,ok\nD1,email,"never closed\nD2,chat,fine\n')
    assert read_error(path) == f"{path}: line 3: a quote opened in this row is never closed"


def test_a_stray_quote_in_an_unquoted_value_is_text(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text('id,text\n1,a 5" screen\n2,fine\n')
    table = open_input(make_job(path))
    assert [t for b in table.batches() for t in b.column("text").to_pylist()] == [
        'a 5" screen',
        "fine",
    ]


@pytest.mark.parametrize(("extra", "fields"), [(",x", 4), ("", 2)])
def test_a_row_with_another_number_of_fields_is_named_by_line(
    tmp_path: Path, extra: str, fields: int
) -> None:
    path = tmp_path / "r.csv"
    good = "".join(f"r{i},chat,text {i}\n" for i in range(100_000))  # past the first block
    bad = "bad,chat" if fields == 2 else f"bad,chat,text{extra}"
    path.write_text(f"id,channel,text\n{good}{bad}\nafter,chat,x\n")
    assert read_error(path) == f"{path}: line 100002: {fields} fields, but the header has 3"


@pytest.mark.parametrize(("delimiter", "shown"), [(";", "';'"), ("\t", "'\\t'"), ("|", "'|'")])
def test_a_header_split_by_another_delimiter_gets_a_hint(
    tmp_path: Path, delimiter: str, shown: str
) -> None:
    path = tmp_path / "d.csv"
    path.write_text(delimiter.join(["id", "channel", "text"]) + "\n" + delimiter.join("abc") + "\n")
    header = delimiter.join(["id", "channel", "text"])
    assert read_error(path) == (
        f"{path}: the header {header!r} is one column; it splits on {shown}: "
        f"set input.delimiter = {shown}"
    )
    table = open_input(make_job(path, delimiter))
    assert table.schema.names == ["id", "channel", "text"]


def test_input_delimiter_is_checked(tmp_path: Path) -> None:
    job = write_job(tmp_path, rows=2, input={"delimiter": ";"})
    assert load_job(job).input.delimiter == ";"
    for bad in ("", ";;", '"'):
        with pytest.raises(JobError, match=r"input\.delimiter: .* must be one character"):
            load_job(job, sets=[f"input.delimiter={bad}"])


def test_run_and_plan_read_a_big_cell_and_another_delimiter(tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=3, input={"delimiter": ";"})
    with (tmp_path / "input.csv").open("wb") as f:
        f.write(b"id;text;doc\nr1;one;small\nr2;two;" + b"x" * BIG + b"\nr3;three;z\n")
    plan = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", job.name],
        cwd=tmp_path,
        env=batchrun_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 0, plan.stderr
    assert "3" in plan.stdout
    done = run_batchrun(job, emu, "--quiet", timeout=120)
    assert done.returncode == 0, done.stderr
    out = pq.read_table(tmp_path / "out.parquet", columns=["id", "doc", "status"])
    assert out.column("status").to_pylist() == ["ok"] * 3
    assert len(out.column("doc")[1].as_py()) == BIG


def test_run_refuses_an_unclosed_quote_before_sending(tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=2)
    (tmp_path / "input.csv").write_text('id,text\nD1,"never closed\nD2,fine\n')
    done = run_batchrun(job, emu)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.endswith("input.csv: line 2: a quote opened in this row is never closed")
    assert emu.ledger()["requests_received"] == 0
