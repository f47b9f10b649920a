"""`batchrun report` formats: chosen by the output's extension, JSON and CSV that keep the
total apart, pseudo-columns (job, file, date), named missing groups, per-answered-row
cost, pricing warnings, and escaping of what the data puts into each format."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_report import output_table, write

from batchrun.cli import main

PRICING = '[pricing."glm-5.2"]\ninput = 0.6\noutput = 2.2\n'


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI's exit code, stdout and stderr, run here (a subprocess costs ~2 s on 2 cores)."""
    with pytest.raises(SystemExit) as exited:
        main(["report", *args])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def job_output(path: Path, job: str, seed: int, rows: int = 300) -> Path:
    return write(path, output_table(rows, seed), {"batchrun.job": job})


@pytest.fixture
def two_jobs(tmp_path: Path) -> Path:
    """Three outputs of two jobs, no partitions: the day comes from completed_at."""
    out = tmp_path / "out"
    job_output(out / "labels-a.parquet", "labels", 1)
    job_output(out / "labels-b.parquet", "labels", 2)
    job_output(out / "summaries.parquet", "summaries", 3)
    return out


# ------------------------------------------------------------ the format


@pytest.mark.parametrize(
    ("name", "starts"),
    [
        ("r.html", "<!DOCTYPE html>"),
        ("r.csv", "kind,model,status,"),
        ("r.json", '{\n  "groups"'),
        ("r.md", "| model | status |"),
        ("r.txt", "model "),
    ],
)
def test_the_format_follows_the_output_extension(
    two_jobs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, starts: str
) -> None:
    target = tmp_path / name
    code, _, err = in_process(capsys, str(two_jobs), "--output", str(target))
    assert code == 0, err
    assert target.read_text().startswith(starts)


def test_a_format_that_clashes_with_the_extension_is_exit_2_and_writes_nothing(
    two_jobs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "guess.html"
    code, out, err = in_process(capsys, str(two_jobs), "--format", "csv", "--output", str(target))
    assert code == 2 and out == "" and not target.exists()
    assert err.count("\n") == 1 and "--format csv" in err and "guess.html" in err
    assert "Traceback" not in err


def test_a_matching_format_and_extension_are_fine(
    two_jobs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "r.md"
    code, _, _ = in_process(capsys, str(two_jobs), "--format", "markdown", "--output", str(target))
    assert code == 0 and target.read_text().startswith("| model")


# ------------------------------------------------------------ JSON and CSV


def test_json_keeps_groups_total_time_and_inputs_apart(
    two_jobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = datetime.now(UTC)
    _, out, _ = in_process(capsys, str(two_jobs), "--by", "job", "--format", "json")
    document = json.loads(out)
    assert set(document) == {"groups", "total", "generated_at", "inputs"}
    assert before <= datetime.fromisoformat(document["generated_at"]) <= datetime.now(UTC)
    assert sorted(document["inputs"]) == sorted(str(p) for p in two_jobs.glob("*.parquet"))
    groups, total = document["groups"], document["total"]
    assert [g["job"] for g in groups] == ["labels", "summaries"] and "job" not in total
    for column in ("rows", "ok", "prompt_tokens", "unpriced"):
        assert sum(g[column] for g in groups) == total[column], column
    assert sum(g["cost_usd"] for g in groups) == pytest.approx(total["cost_usd"])


def test_csv_has_one_header_and_the_total_marked_so_data_rows_sum_right(
    two_jobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = in_process(capsys, str(two_jobs), "--by", "model", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert out.count("kind,model,rows,") == 1
    data = [r for r in rows if r["kind"] == "group"]
    (total,) = [r for r in rows if r["kind"] == "total"]
    assert total["model"] == "" and len(data) == len(rows) - 1
    for column in ("rows", "ok", "pending", "completion_tokens"):
        assert sum(int(r[column]) for r in data) == int(total[column]), column
    cost = sum(float(r["cost_usd"]) for r in data if r["cost_usd"])
    assert cost == pytest.approx(float(total["cost_usd"]))


# ------------------------------------------------------------ pseudo-columns


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "markdown", "html"])
def test_by_job_file_and_date_work_in_every_format(
    two_jobs: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    for by in ("job", "file", "date", "job,date"):
        code, out, err = in_process(capsys, str(two_jobs), "--by", by, "--format", fmt)
        assert code == 0, (by, err)
        assert "summaries" in out or by == "date", by
        assert "2026-11-25" in out or by in ("job", "file"), by


def test_by_job_and_file_read_the_metadata_and_the_path(
    two_jobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = in_process(capsys, str(two_jobs), "--by", "job,file", "--format", "json")
    groups = json.loads(out)["groups"]
    pairs = {(g["job"], Path(g["file"]).name): g["rows"] for g in groups}
    assert pairs == {
        ("labels", "labels-a.parquet"): 300,
        ("labels", "labels-b.parquet"): 300,
        ("summaries", "summaries.parquet"): 300,
    }


def test_by_date_is_the_partition_else_the_day_of_completed_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_output(tmp_path / "out" / "date=2026-11-20" / "part.parquet", "nightly", 1, rows=100)
    flat = output_table(100, 2)
    stamps = [datetime(2026, 11, 21, 23, tzinfo=UTC) + timedelta(hours=i % 2) for i in range(100)]
    column = pa.array(stamps, pa.timestamp("us", tz="UTC"))
    flat = flat.set_column(flat.schema.get_field_index("completed_at"), "completed_at", column)
    write(tmp_path / "out" / "flat.parquet", flat)
    _, out, _ = in_process(capsys, str(tmp_path / "out"), "--by", "date", "--format", "json")
    rows = {g["date"]: g["rows"] for g in json.loads(out)["groups"]}
    assert rows == {"2026-11-20": 100, "2026-11-21": 50, "2026-11-22": 50}


def test_a_file_without_a_job_name_groups_as_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "old.parquet", output_table(50, 1))
    _, out, _ = in_process(capsys, str(tmp_path), "--by", "job", "--format", "json")
    assert [g["job"] for g in json.loads(out)["groups"]] == ["(none)"]


def test_a_real_column_of_a_pseudo_name_wins_and_variant_is_a_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = output_table(100, 1)
    table = table.append_column("job", pa.array(["cook", "pilot"] * 50))
    table = table.append_column("variant", pa.array(["a", "b", "c", "d"] * 25))
    write(tmp_path / "o.parquet", table, {"batchrun.job": "hiring"})
    _, out, _ = in_process(capsys, str(tmp_path), "--by", "job,variant", "--format", "json")
    groups = json.loads(out)["groups"]
    assert {(g["job"], g["variant"]) for g in groups} == {
        ("cook", "a"), ("cook", "c"), ("pilot", "b"), ("pilot", "d"),
    }  # fmt: skip


# ------------------------------------------------------------ what the figures mean


def test_missing_groups_read_as_what_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = output_table(600, 4)
    failed = pc.equal(table["status"], "error")
    model = pc.if_else(failed, pa.scalar(None, pa.string()), table["model"])
    write(
        tmp_path / "o.parquet",
        table.set_column(table.schema.get_field_index("model"), "model", model),
    )
    _, out, _ = in_process(capsys, str(tmp_path), "--by", "model")
    lines = out.splitlines()
    names = [line.split()[0] for line in lines[2:-2]]
    assert names[-3:] == ["(failed)", "(invalid)", "(unanswered)"]
    assert "(null)" not in out
    unanswered = next(line for line in lines if line.startswith("(unanswered)")).split()
    pending = pc.sum(pc.equal(table["status"], "pending").cast(pa.int64())).as_py()
    assert unanswered[1] == unanswered[5] == f"{pending:,}"  # rows, pending


def test_cost_per_1000_divides_by_the_answered_priced_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = output_table(3000, 5)
    write(tmp_path / "o.parquet", table)
    _, out, _ = in_process(capsys, str(tmp_path), "--by", "status", "--format", "json")
    total = json.loads(out)["total"]
    ok = pc.equal(table["status"], "ok")
    priced = pc.sum(pc.and_(ok, pc.is_valid(table["cost_usd"])).cast(pa.int64())).as_py()
    assert 0 < priced < total["ok"] < total["rows"]
    assert total["cost_per_1k_answered"] == pytest.approx(total["cost_usd"] * 1000 / priced)
    groups = {g["status"]: g for g in json.loads(out)["groups"]}
    assert groups["pending"]["cost_per_1k_answered"] is None


def test_a_model_without_a_price_says_so_in_the_table(
    two_jobs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = in_process(capsys, str(two_jobs), "--by", "model")
    row = next(line for line in out.splitlines() if line.startswith("unpriced-model"))
    assert "no price" in row
    pending = next(line for line in out.splitlines() if line.startswith("(unanswered)"))
    assert "no price" not in pending and "n/a" in pending


def test_a_pricing_entry_for_no_model_in_the_outputs_is_warned_about_once(
    two_jobs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "p.toml"
    extra = '[pricing."gpt-55"]\ninput = 1\noutput = 2\n[pricing."o9"]\ninput = 1\noutput = 2\n'
    prices.write_text(PRICING + extra + '[pricing."*"]\ninput = 1\noutput = 1\n')
    code, _, err = in_process(capsys, str(two_jobs), "--pricing", str(prices))
    assert code == 0
    warnings = [line.split(" ", 1)[1] for line in err.splitlines() if "warning" in line]
    assert warnings == [
        "batchrun: warning: --pricing: 'gpt-55' is in no output",
        "batchrun: warning: --pricing: 'o9' is in no output",
    ]


# ------------------------------------------------------------ escaping

HOSTILE_MODEL = "<script>alert(1)</script>"
HOSTILE_VALUES = ("<img src=x onerror=alert(1)>", '=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)")


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    table = output_table(len(HOSTILE_VALUES) * 20, 6)
    model = pa.array([HOSTILE_MODEL] * table.num_rows)
    lang = pa.array(list(HOSTILE_VALUES) * 20)
    table = table.set_column(table.schema.get_field_index("model"), "model", model)
    table = table.set_column(table.schema.get_field_index("lang"), "lang", lang)
    return write(tmp_path / "o.parquet", table)


def test_markdown_and_html_escape_what_the_data_embeds(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for fmt in ("markdown", "html"):
        _, out, _ = in_process(capsys, str(hostile), "--by", "model,lang", "--format", fmt)
        assert "<script" not in out and "<img" not in out, fmt
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out, fmt
        assert "&lt;img src=x onerror=alert(1)&gt;" in out, fmt


def test_csv_cells_a_spreadsheet_would_run_get_a_leading_quote(
    hostile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = in_process(capsys, str(hostile), "--by", "lang", "--format", "csv")
    cells = {r["lang"] for r in csv.DictReader(io.StringIO(out)) if r["kind"] == "group"}
    assert cells == {
        "<img src=x onerror=alert(1)>", "'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)",
    }  # fmt: skip
    numbers = [r["cost_usd"] for r in csv.DictReader(io.StringIO(out))]
    assert all(not c.startswith("'") for c in numbers)
    assert not math.isnan(float(numbers[-1]))


def test_csv_keeps_whole_number_keys_whole_beside_the_blank_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for hour in (2, 10):
        write(tmp_path / f"hour={hour}" / "part.parquet", output_table(10, hour))
    _, out, _ = in_process(capsys, str(tmp_path), "--by", "hour", "--format", "csv")
    assert [line.split(",")[:3] for line in out.splitlines()[1:]] == [
        ["group", "2", "10"], ["group", "10", "10"], ["total", "", "20"],
    ]  # fmt: skip


def test_csv_by_an_input_column_called_kind_keeps_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = output_table(40, 1).append_column("kind", pa.array(["bug", "idea"] * 20))
    write(tmp_path / "o.parquet", table)
    code, out, err = in_process(capsys, str(tmp_path), "--by", "kind", "--format", "csv")
    assert code == 0, err
    assert out.splitlines()[0].startswith("kind,kind,rows,")
    assert [line.split(",")[:2] for line in out.splitlines()[1:]] == [
        ["group", "bug"], ["group", "idea"], ["total", ""],
    ]  # fmt: skip
