"""`batchrun report`: aggregates real output Parquet files written here."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchrun._errors import InputError, JobError
from batchrun._types import EXTRA_COLUMNS, RESULT_COLUMNS
from batchrun.report.aggregate import FORMATS, ReportResult, render, report

MODELS = ("gpt-5.5", "glm-5.2", "unpriced-model")
STATUSES = ("ok", "ok", "ok", "error", "invalid", "pending")


def output_table(rows: int, seed: int, prefix: str = "") -> pa.Table:
    """A table shaped like a batchrun output: input columns, then the result columns."""
    rng = np.random.default_rng(seed)
    status = rng.choice(STATUSES, rows)
    model = rng.choice(MODELS, rows)
    sent = np.isin(status, ["ok", "error"])
    ok = status == "ok"

    def tokens(low: int, high: int) -> pa.Array:
        return pa.array(rng.integers(low, high, rows), pa.int64(), mask=~ok)

    prompt = tokens(50, 500)
    priced = ok & (model != "unpriced-model")
    result: dict[str, pa.Array] = {
        "response": pa.array(["an answer"] * rows, mask=~ok),
        "reasoning_content": pa.nulls(rows, pa.string()),
        "tool_calls": pa.nulls(rows, pa.string()),
        "finish_reason": pa.array(["stop"] * rows, mask=~ok),
        "model": pa.array(model, mask=~sent),
        "response_id": pa.array([f"r{i}" for i in range(rows)], mask=~ok),
        "prompt_tokens": prompt,
        "completion_tokens": tokens(1, 300),
        "total_tokens": tokens(1, 800),
        "cached_tokens": tokens(0, 50),
        "reasoning_tokens": tokens(0, 100),
        "cost_usd": pa.array(rng.random(rows) / 100, pa.float64(), mask=~priced),
        "status": pa.array(status),
        "error_type": pa.array(["server_error"] * rows, mask=status != "error"),
        "error_message": pa.array(["boom"] * rows, mask=status != "error"),
        "attempts": pa.array(sent.astype(np.int32), pa.int32()),
        "latency_ms": pa.array(rng.gamma(2.0, 300.0, rows), pa.float64(), mask=~ok),
        "completed_at": pa.array(
            [datetime(2026, 11, 25, tzinfo=UTC)] * rows, pa.timestamp("us", tz="UTC")
        ),
    }
    inputs = {
        "review_id": pa.array([f"id-{seed}-{i}" for i in range(rows)]),
        "text": pa.array(["some long review text"] * rows),
        "lang": pa.array(rng.choice(["en", "de", "fr"], rows)),
    }
    return pa.table(inputs | {prefix + k: v for k, v in result.items()})


def write(path: Path, table: pa.Table, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path)
    return path


def total(result: ReportResult) -> dict[str, Any]:
    return result.table.iloc[-1].to_dict()


def direct_sums(paths: list[Path], prefix: str = "") -> dict[str, Any]:
    """Totals computed straight from the files with pyarrow, no report code involved."""
    table = pa.concat_tables(pq.read_table(p) for p in paths)
    status = table[prefix + "status"]
    sums: dict[str, Any] = {"rows": table.num_rows}
    for s in ("ok", "error", "invalid", "pending"):
        sums[s] = pc.sum(pc.equal(status, s).cast(pa.int64())).as_py()
    for name in ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens"):
        sums[name] = pc.sum(table[prefix + name]).as_py()
    sums["cost_usd"] = pc.sum(table[prefix + "cost_usd"]).as_py()
    return sums


@pytest.fixture
def two_days(tmp_path: Path) -> list[Path]:
    return [
        write(tmp_path / "out" / "date=2026-11-24" / "part.parquet", output_table(3000, 1)),
        write(tmp_path / "out" / "date=2026-11-25" / "part.parquet", output_table(2000, 2)),
    ]


def test_totals_equal_sums_read_directly_from_the_files(two_days: list[Path]) -> None:
    result = report([str(p) for p in two_days])
    expected = direct_sums(two_days)
    got = total(result)
    assert got["model"] == "TOTAL"
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name


def test_groups_sum_to_the_total(two_days: list[Path]) -> None:
    table = report([str(p) for p in two_days]).table
    groups, tot = table.iloc[:-1], table.iloc[-1]
    for name in ("rows", "ok", "prompt_tokens", "cost_usd"):
        assert groups[name].sum() == pytest.approx(tot[name])
    assert set(zip(groups["model"], groups["status"], strict=True)) >= {("gpt-5.5", "ok")}


def test_group_by_a_custom_input_column(two_days: list[Path]) -> None:
    table = report([str(p) for p in two_days], by=["lang"]).table
    assert list(table["lang"]) == ["de", "en", "fr", "TOTAL"]
    data = pa.concat_tables(pq.read_table(p) for p in two_days).to_pandas()
    expected = data.groupby("lang")["prompt_tokens"].sum()
    assert list(table["prompt_tokens"][:-1]) == list(expected)


def test_hive_partitions_become_columns_that_can_be_grouped_on(
    two_days: list[Path], tmp_path: Path
) -> None:
    table = report([str(tmp_path / "out")], by=["date"]).table
    assert list(table["date"]) == ["2026-11-24", "2026-11-25", "TOTAL"]
    assert list(table["rows"]) == [3000, 2000, 5000]


def test_integer_partitions_are_grouped_as_numbers(tmp_path: Path) -> None:
    for hour in (2, 10):
        write(tmp_path / f"hour={hour}" / "part.parquet", output_table(10, hour))
    table = report([str(tmp_path)], by=["hour"]).table
    assert list(table["hour"]) == [2, 10, "TOTAL"]


def test_a_glob_and_a_directory_find_the_same_files(two_days: list[Path], tmp_path: Path) -> None:
    by_glob = report([str(tmp_path / "out" / "date=*" / "*.parquet")])
    by_dir = report([str(tmp_path / "out")])
    assert sorted(by_glob.files) == sorted(by_dir.files) == sorted(str(p) for p in two_days)
    pd.testing.assert_frame_equal(by_glob.table, by_dir.table)


def test_a_directory_walk_ignores_hidden_and_temporary_files(
    two_days: list[Path], tmp_path: Path
) -> None:
    (tmp_path / "out" / ".part.parquet.tmp").write_bytes(b"half written")
    (tmp_path / "out" / "_SUCCESS").write_bytes(b"")
    assert len(report([str(tmp_path / "out")]).files) == 2


def test_a_foreign_file_is_skipped_and_reported(two_days: list[Path], tmp_path: Path) -> None:
    foreign = write(tmp_path / "out" / "inputs.parquet", pa.table({"text": ["a", "b"]}))
    result = report([str(tmp_path / "out")])
    assert [s.path for s in result.skipped] == [str(foreign)]
    assert "status" in result.skipped[0].missing
    assert "inputs.parquet" in str(result.skipped[0])
    assert total(result)["rows"] == 5000


def test_only_foreign_files_is_an_input_error_naming_file_and_columns(tmp_path: Path) -> None:
    foreign = write(tmp_path / "inputs.parquet", pa.table({"text": ["a"]}))
    with pytest.raises(InputError, match=r"inputs\.parquet.*missing columns: status, ") as err:
        report([str(foreign)])
    assert "\n" not in str(err.value)


def test_a_missing_by_column_names_it_and_lists_the_available_ones(two_days: list[Path]) -> None:
    with pytest.raises(InputError, match=r"'colour' not found; available: .*lang.*date"):
        report([str(p) for p in two_days], by=["model", "colour"])


def test_a_path_matching_nothing_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no Parquet files match"):
        report([str(tmp_path / "nothing-*.parquet")])


def test_latency_percentiles_match_numpy_over_ok_rows(two_days: list[Path]) -> None:
    table = report([str(p) for p in two_days], by=["model"]).table
    data = pa.concat_tables(pq.read_table(p) for p in two_days).to_pandas()
    ok = data[data["status"] == "ok"]
    for model, latencies in ok.groupby("model")["latency_ms"]:
        row = table[table["model"] == model].iloc[0]
        assert row["latency_p50_ms"] == pytest.approx(np.percentile(latencies, 50))
        assert row["latency_p95_ms"] == pytest.approx(np.percentile(latencies, 95))
    assert total_row(table)["latency_p95_ms"] == pytest.approx(np.percentile(ok["latency_ms"], 95))


def total_row(table: pd.DataFrame) -> dict[str, Any]:
    return table.iloc[-1].to_dict()


def test_cost_of_a_group_with_no_priced_row_is_nan_and_counted_unpriced(
    two_days: list[Path],
) -> None:
    table = report([str(p) for p in two_days], by=["model"]).table
    unpriced = table[table["model"] == "unpriced-model"].iloc[0]
    assert np.isnan(unpriced["cost_usd"]) and unpriced["unpriced"] == unpriced["ok"] > 0
    assert total_row(table)["unpriced"] == unpriced["unpriced"]
    assert "n/a" in render(table, "table")


def test_prefixed_columns_are_found_from_metadata(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.parquet", output_table(500, 3, prefix="br_"), {"batchrun.prefix": "br_"}
    )
    got = total(report([str(path)]))
    for name, value in direct_sums([path], prefix="br_").items():
        assert got[name] == pytest.approx(value), name


def test_prefix_is_found_from_the_columns_when_metadata_lacks_it(tmp_path: Path) -> None:
    # The input has its own "status" column: the reason output.prefix exists.
    table = output_table(500, 4, prefix="br_").append_column("status", pa.array(["x"] * 500))
    path = write(tmp_path / "p.parquet", table)
    got = report([str(path)], by=["model"])
    assert total(got)["ok"] == direct_sums([path], prefix="br_")["ok"]
    models = got.table["model"][:-1]
    assert set(models) == {*MODELS, "(unanswered)", "(invalid)"}


def test_nothing_but_needed_columns_is_read(
    two_days: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    read_columns: list[str] = []
    original = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: Any, columns: list[str], **kw: Any) -> Any:
        read_columns.extend(columns)
        return original(self, *args, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    report([str(p) for p in two_days])
    assert not {"response", "text", "review_id", "error_message"} & set(read_columns)
    assert set(read_columns) <= {*RESULT_COLUMNS, *EXTRA_COLUMNS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders(two_days: list[Path], fmt: str) -> None:
    assert render(report([str(p) for p in two_days]).table, fmt).strip()


def test_csv_parses_back_with_pandas(two_days: list[Path]) -> None:
    table = report([str(p) for p in two_days]).table
    back = pd.read_csv(io.StringIO(render(table, "csv")))
    assert list(back.columns) == ["kind", *table.columns]
    assert back["prompt_tokens"].tolist() == table["prompt_tokens"].tolist()
    assert back["cost_usd"].iloc[-1] == pytest.approx(table["cost_usd"].iloc[-1])


def test_json_is_records_with_numbers_as_numbers(two_days: list[Path]) -> None:
    table = report([str(p) for p in two_days], by=["model"]).table
    document = json.loads(render(table, "json"))
    records, tot = document["groups"], document["total"]
    assert len(records) == len(table) - 1 and "model" not in tot
    assert isinstance(tot["prompt_tokens"], int)
    assert isinstance(tot["cost_usd"], float)
    assert next(r for r in records if r["model"] == "unpriced-model")["cost_usd"] is None


def test_markdown_is_a_pipe_table_with_a_header_row(two_days: list[Path]) -> None:
    table = report([str(p) for p in two_days]).table
    lines = render(table, "markdown").splitlines()
    assert lines[0].startswith(
        "| model | status | rows | ok | error | invalid | pending | shared | prompt |"
    )
    assert set(lines[1]) <= set("|-: ") and lines[1].count("|") == len(table.columns) + 1
    assert len(lines) == len(table) + 2 and lines[-1].startswith("| TOTAL |")


def test_table_uses_separators_and_four_decimal_cost(tmp_path: Path) -> None:
    path = write(tmp_path / "o.parquet", output_table(5000, 5))
    text = render(report([str(path)], by=["status"]).table, "table")
    header, *_, last = text.splitlines()
    assert header.split()[:3] == ["status", "rows", "ok"]
    assert "5,000" in last and f"{direct_sums([path])['cost_usd']:,.4f}" in last


def test_an_unknown_format_is_a_job_error(two_days: list[Path]) -> None:
    with pytest.raises(JobError, match="allowed: table, csv, json, markdown"):
        render(report([str(p) for p in two_days]).table, "xml")
