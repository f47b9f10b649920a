"""The input table: formats, streaming, row keys and every InputError."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun._errors import InputError
from batchrun.io.input import open_input, row_keys, validate_keys
from batchrun.job.config import InputConfig, Job, OutputConfig, RequestConfig


def make_job(path: Path | str, id_column: str | None = "id") -> Job:
    return Job(
        name="t",
        input=InputConfig(path=str(path), id_column=id_column),
        request=RequestConfig(model="m", prompt="{text}"),
        output=OutputConfig(path="out.parquet"),
    )


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, list[object]]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def read_all(job: Job) -> pa.Table:
    table = open_input(job)
    return pa.Table.from_batches(list(table.batches()), schema=table.schema)


def test_csv_columns_are_strings_and_keep_leading_zeros(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "id,text,n\n007,hello,1\n008,,2\n")
    table = open_input(make_job(path))
    assert table.schema == pa.schema(
        [("id", pa.string()), ("text", pa.string()), ("n", pa.string())]
    )
    rows = read_all(make_job(path)).to_pylist()
    assert rows == [{"id": "007", "text": "hello", "n": "1"}, {"id": "008", "text": None, "n": "2"}]


def test_parquet_keeps_arrow_types(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", {"id": [1, 2], "text": ["x", "y"]})
    table = open_input(make_job(path))
    assert table.schema == pa.schema([("id", pa.int64()), ("text", pa.string())])
    assert table.count_rows() == 2


def test_batches_are_bounded_by_batch_size(tmp_path: Path) -> None:
    lines = "".join(f"{i},t{i}\n" for i in range(1000))
    path = write_csv(tmp_path / "a.csv", "id,text\n" + lines)
    table = open_input(make_job(path))
    sizes = [b.num_rows for b in table.batches(batch_size=128)]
    assert max(sizes) <= 128 and sum(sizes) == 1000 == table.count_rows()


def test_directory_reads_csv_and_parquet_sorted_and_skips_hidden(tmp_path: Path) -> None:
    write_csv(tmp_path / "b.csv", "id,text\nb1,x\n")
    write_csv(tmp_path / "a.csv", "id,text\na1,x\n")
    write_csv(tmp_path / "_SUCCESS.csv", "id,text\nzz,x\n")
    (tmp_path / "notes.txt").write_text("ignored")
    sub = tmp_path / "part"
    sub.mkdir()
    write_parquet(sub / "c.parquet", {"id": ["c1"], "text": ["x"]})
    assert read_all(make_job(tmp_path)).column("id").to_pylist() == ["a1", "b1", "c1"]


def test_glob_matches_files_in_order(tmp_path: Path) -> None:
    write_csv(tmp_path / "day2.csv", "id,text\nd2,x\n")
    write_csv(tmp_path / "day1.csv", "id,text\nd1,x\n")
    write_csv(tmp_path / "other.csv", "id,text\no,x\n")
    job = make_job(tmp_path / "day*.csv")
    assert read_all(job).column("id").to_pylist() == ["d1", "d2"]


def test_files_are_unified_by_column_name(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"id": pa.array([1], pa.int32()), "text": ["a"]}), tmp_path / "1.parquet"
    )
    pq.write_table(
        pa.table({"text": ["b"], "id": pa.array([2], pa.int64())}), tmp_path / "2.parquet"
    )
    pq.write_table(pa.table({"id": pa.array([3], pa.int64())}), tmp_path / "3.parquet")
    table = read_all(make_job(tmp_path))
    assert table.schema == pa.schema([("id", pa.int64()), ("text", pa.string())])
    assert table.to_pylist() == [
        {"id": 1, "text": "a"},
        {"id": 2, "text": "b"},
        {"id": 3, "text": None},
    ]


def test_relative_path_is_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_csv(tmp_path / "a.csv", "id,text\n1,x\n")
    monkeypatch.chdir(tmp_path)
    assert open_input(make_job("a.csv")).count_rows() == 1


def test_row_keys_are_id_text_or_global_position(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", {"id": [10, 11], "text": ["x", "y"]})
    batch = next(open_input(make_job(path)).batches())
    assert row_keys(batch, make_job(path), start=0) == ["10", "11"]
    assert row_keys(batch, make_job(path, id_column=None), start=500) == ["500", "501"]


# --- errors ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"input.path: '.*nope.csv' does not exist"):
        open_input(make_job(tmp_path / "nope.csv"))


def test_glob_without_matches(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no .csv or .parquet files match '.*\*.parquet'"):
        open_input(make_job(tmp_path / "*.parquet"))


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"holds no .csv or .parquet files"):
        open_input(make_job(tmp_path))


def test_unsupported_suffix(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(InputError, match=r"is not .csv or .parquet"):
        open_input(make_job(tmp_path / "a.json"))


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(InputError, match=r"bad.parquet: not a readable Parquet file: .*magic"):
        open_input(make_job(path))


def test_non_utf8_csv_names_byte_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"id,text\n1,ok\n2,caf\xe9\n")
    table = open_input(make_job(path))
    with pytest.raises(InputError) as info:
        list(table.batches())
    assert str(info.value) == (
        f"{path}: not UTF-8 text (byte 0xE9 at offset 18, line 3); re-save it as UTF-8"
    )


def test_ragged_csv_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", "id,text\n1,a\n2,b,c\n")
    with pytest.raises(InputError, match=r"r.csv: line 3: 3 fields, but the header has 2$"):
        list(open_input(make_job(path)).batches())


def test_missing_id_column_lists_available_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "key,text\n1,a\n")
    with pytest.raises(InputError) as info:
        open_input(make_job(path, id_column="id"))
    assert (
        str(info.value) == "input.id_column: column 'id' is not in the input (columns: key, text)"
    )


def test_null_id_names_the_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "id,text\n1,a\n,b\n")
    job = make_job(path)
    with pytest.raises(InputError, match=r"^row 1 has a null id in column 'id'$"):
        validate_keys(open_input(job), job)


def test_duplicate_id_reports_both_rows_across_files(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", "id,text\nx,1\ny,2\nz,3\n")
    write_csv(tmp_path / "b.csv", "id,text\nw,4\ny,5\n")
    job = make_job(tmp_path)
    with pytest.raises(InputError, match=r"^duplicate id 'y' in column 'id': rows 1 and 4$"):
        validate_keys(open_input(job), job, batch_size=2)


def test_unique_ids_pass_validation(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", {"id": list(range(5000)), "text": ["t"] * 5000})
    job = make_job(path)
    validate_keys(open_input(job), job)


def test_mixed_types_across_files(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", {"id": [1], "text": ["a"]})
    write_csv(tmp_path / "b.csv", "id,text\n2,b\n")
    with pytest.raises(InputError, match=r"input files disagree on column types"):
        open_input(make_job(tmp_path))


def test_id_column_must_be_text_or_integer(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", {"id": [1.5], "text": ["x"]})
    with pytest.raises(InputError, match=r"^input.id_column: column 'id' has type double; use a"):
        open_input(make_job(path))
