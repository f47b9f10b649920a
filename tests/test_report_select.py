"""`batchrun report --since/--until/--pricing`: days, pruning, what-if prices, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_report import output_table, write

from batchrun._errors import JobError
from batchrun.cli import main
from batchrun.job.config import Price
from batchrun.report.aggregate import report
from batchrun.report.selection import DayRange, load_pricing

DAYS = ("2026-11-24", "2026-11-25", "2026-11-26")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "batchrun", "report", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI's exit code, stdout and stderr, run here (a subprocess costs ~2 s on 2 cores)."""
    with pytest.raises(SystemExit) as exited:
        main(["report", *args])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.fixture
def partitioned(tmp_path: Path) -> Path:
    for seed, day in enumerate(DAYS, start=1):
        write(tmp_path / "out" / f"date={day}" / "part.parquet", output_table(400, seed))
    return tmp_path / "out"


@pytest.fixture
def one_file_over_days(tmp_path: Path) -> Path:
    """No partitions: the day comes from completed_at (23:30 UTC stays on its day)."""
    table = output_table(600, 7)
    stamps = [
        datetime(2026, 11, 24, 23, 30, tzinfo=UTC) + timedelta(days=i % 3) for i in range(600)
    ]
    column = pa.array(stamps, pa.timestamp("us", tz="UTC"))
    table = table.set_column(table.schema.get_field_index("completed_at"), "completed_at", column)
    return write(tmp_path / "flat.parquet", table)


def test_since_and_until_keep_the_days_of_completed_at(one_file_over_days: Path) -> None:
    days = DayRange(date(2026, 11, 25), date(2026, 11, 25))
    got = report([str(one_file_over_days)], by=["day"], days=days).table
    assert list(got["day"]) == ["2026-11-25", "TOTAL"]
    assert got["rows"].iloc[0] == 200


def test_out_of_range_partitions_are_not_opened(partitioned: Path) -> None:
    garbage = partitioned / "date=2026-11-01" / "part.parquet"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not parquet at all")
    done = cli(str(partitioned), "--since", "2026-11-25", "--by", "day", "--format", "json")
    assert done.returncode == 0 and done.stderr == ""
    records = json.loads(done.stdout)["groups"]
    assert [r["day"] for r in records] == ["2026-11-25", "2026-11-26"]
    # Without the range the same garbage file is read, and refused.
    assert cli(str(partitioned), "--format", "json").returncode == 2


def test_the_partition_date_is_the_day_of_all_its_rows(partitioned: Path) -> None:
    # output_table's completed_at is 2026-11-25 in every file; the partition wins.
    got = report([str(partitioned)], by=["day"], days=DayRange(until=date(2026, 11, 24))).table
    assert list(got["day"]) == ["2026-11-24", "TOTAL"] and got["rows"].iloc[-1] == 400


def test_repriced_usd_is_the_formula_over_billed_tokens(partitioned: Path) -> None:
    pricing = {"gpt-5.5": Price(input=2.0, output=8.0, cached_input=0.5)}
    got = report([str(partitioned)], by=["model"], pricing=pricing).table
    data = pa.concat_tables(pq.read_table(p) for p in sorted(partitioned.rglob("*.parquet")))
    rows = data.filter(pc.equal(data["model"], "gpt-5.5")).to_pandas()
    prompt, cached = rows["prompt_tokens"].fillna(0), rows["cached_tokens"].fillna(0)
    expected = ((prompt - cached) * 2.0 + cached * 0.5 + rows["completion_tokens"] * 8.0).sum()
    row = got[got["model"] == "gpt-5.5"].iloc[0]
    assert row["repriced_usd"] == pytest.approx(expected / 1e6)
    assert got[got["model"] == "glm-5.2"]["repriced_usd"].isna().all()


def test_a_wildcard_price_reprices_every_model(partitioned: Path) -> None:
    pricing = {"*": Price(input=1.0, output=1.0)}
    got = report([str(partitioned)], by=["model"], pricing=pricing).table
    priced = got[got["ok"] > 0]
    assert priced["repriced_usd"].notna().all() and len(priced) == 3 + 1  # models, TOTAL


def test_shared_rows_cost_nothing_when_repriced(tmp_path: Path) -> None:
    table = output_table(300, 9)
    ok = pc.equal(table["status"], "ok")
    path = write(tmp_path / "o.parquet", table.append_column("shared", ok))
    got = report([str(path)], pricing={"*": Price(input=1.0, output=1.0)}).table
    assert got["repriced_usd"].iloc[-1] == 0.0 and got["shared"].iloc[-1] == got["ok"].iloc[-1]


def test_without_pricing_the_other_formats_have_no_repriced_column(
    partitioned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = in_process(capsys, str(partitioned), "--format", "json")
    records: list[dict[str, Any]] = json.loads(out)["groups"]
    assert "repriced_usd" not in records[0]


def test_pricing_file_shows_next_to_the_recorded_cost_in_every_format(
    partitioned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "p.toml"
    prices.write_text('[pricing."glm-5.2"]\ninput = 0.6\noutput = 2.2\n')
    for fmt in ("table", "csv", "json", "markdown", "html"):
        code, out, _ = in_process(
            capsys, str(partitioned), "--pricing", str(prices), "--format", fmt
        )
        assert code == 0 and "repriced" in out.replace(" ", "").replace("-", ""), fmt


def test_output_writes_the_file_and_nothing_to_stdout(
    partitioned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "r.html"
    code, out, _ = in_process(capsys, str(partitioned), "--format", "html", "--output", str(target))
    assert code == 0 and out == "" and target.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "25/11/2026"], "--since: '25/11/2026' is not an ISO date"),
        (["--until", "yesterday"], "--until: 'yesterday' is not an ISO date"),
        (["--since", "2026-11-26", "--until", "2026-11-24"], "is after --until"),
        (["--since", "2027-01-01"], "no file to report on from 2027-01-01 to the end"),
        (["--pricing", "missing.toml"], "--pricing: cannot read missing.toml"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    partitioned: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = in_process(capsys, str(partitioned), *args)
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[pricing\n", "not valid TOML"),
        ("[job]\nname = 'x'\n", 'needs [pricing."MODEL"] tables'),
        ('[pricing."m"]\ninput = 1\n', "pricing.m.output: missing; it is required"),
        ('[pricing."m"]\ninput = -1\noutput = 1\n', "pricing.m.input: must be a number >= 0"),
        ('[pricing."m"]\ninput = 1\noutput = 1\nfoo = 2\n', "unknown key pricing.m.foo"),
    ],
)
def test_a_malformed_pricing_file_exits_2_with_one_line(
    partitioned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    prices = tmp_path / "p.toml"
    prices.write_text(text)
    code, _, err = in_process(capsys, str(partitioned), "--pricing", str(prices))
    assert code == 2 and message in err and err.count("\n") == 1, err
    with pytest.raises(JobError, match="--pricing"):
        load_pricing(str(prices))


def test_an_empty_selection_of_rows_exits_2(
    one_file_over_days: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = in_process(capsys, str(one_file_over_days), "--until", "2026-11-01")
    assert code == 2 and "no rows to report in 1 file(s) from the start to 2026-11-01" in err
