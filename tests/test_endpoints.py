"""Answers stay tied to what gave them: the row that holds one in the output (positional
inputs edited between runs), the endpoint that answered, the emulator's synthetic
answers, and the file that stands at ``output.path`` when the output is swapped in."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import (
    batchrun_env,
    billed_usd,
    review_rows,
    run_batchrun,
    start_batchrun,
    wait_for_requests,
    write_csv,
    write_job,
)

from batchrun.report.aggregate import FORMATS, render, report
from batchrun.report.page import render_html
from batchrun.store.origin import endpoint_of


def positional_job(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    """A job whose rows are keyed by position (no ``input.id_column``)."""
    job = write_job(tmp_path, rows=rows)
    job.write_text(job.read_text().replace('id_column = "id"\n', ""), encoding="utf-8")
    return job


def output(job: Path) -> list[dict[str, Any]]:
    return pq.read_table(job.parent / "out.parquet").to_pylist()


# --- cost and shared follow the answer ---------------------------------------------------


def test_editing_a_positional_input_keeps_every_cost_on_the_row_that_holds_the_answer(
    tmp_path: Path, emulator
) -> None:
    emu = emulator()
    rows = review_rows(20)
    rows[7]["text"] = rows[3]["text"]  # one true duplicate: row 7 shares row 3's answer
    job = positional_job(tmp_path, rows)
    assert run_batchrun(job, emu).returncode == 0
    paid = billed_usd(emu.ledger())
    assert sum(row["shared"] for row in output(job)) == 1

    # Delete the first row, move the last to the front, insert a row before the duplicate.
    edited = [rows[19], *rows[1:6], {"id": "new", "text": rows[5]["text"]}, *rows[6:19]]
    write_csv(tmp_path / "input.csv", edited)
    run = run_batchrun(job, emu)

    assert run.returncode == 0, run.stderr
    assert emu.ledger()["requests_billed"] == 19  # nothing re-sent
    got = output(job)
    texts = [row["text"] for row in got]
    for i, row in enumerate(got):
        duplicate = row["text"] in texts[:i]
        assert row["shared"] is duplicate, (i, row["text"])
        assert (row["cost_usd"] == 0.0) is duplicate and row["cost_usd"] is not None
    # The answers the output holds: all but row 0's, which the input no longer has.
    kept = sum(row["cost_usd"] for row in got)
    assert 0 < kept < paid
    total = report([str(tmp_path / "out.parquet")]).table.iloc[-1]
    assert abs(total["cost_usd"] - kept) < 1e-9 and total["shared"] == 2


# --- answers belong to the endpoint that gave them -----------------------------------------


def test_a_run_against_another_endpoint_stops_before_sending_until_the_user_chooses(
    tmp_path: Path, emulator
) -> None:
    first, other = emulator(), emulator()
    job = write_job(tmp_path, rows=20)
    assert run_batchrun(job, first).returncode == 0

    refused = run_batchrun(job, other, moved=False)

    assert refused.returncode == 2, refused.stderr
    assert other.ledger()["requests_received"] == 0  # nothing sent
    (line,) = [x for x in refused.stderr.splitlines() if "error" in x]
    assert first.base_url in line and other.base_url in line
    assert "--fresh" in line and "--endpoint-moved" in line and "emulator" in line
    assert "Traceback" not in refused.stderr

    # The same endpoint spelled with a trailing slash is the same endpoint.
    again = run_batchrun(job, first, "--set", f'api.base_url="{first.base_url}/"', moved=False)
    assert again.returncode == 0, again.stderr

    moved = run_batchrun(job, other, "--endpoint-moved", moved=False)
    assert moved.returncode == 0, moved.stderr
    assert other.ledger()["requests_received"] == 0  # the answers were kept
    assert run_batchrun(job, other, moved=False).returncode == 0  # and now belong to it

    fresh = run_batchrun(job, first, "--fresh", moved=False)
    assert fresh.returncode == 0, fresh.stderr
    assert first.ledger()["requests_billed"] == 40  # sent again, once more


def test_endpoints_spelled_differently_are_one_endpoint() -> None:
    same = {
        endpoint_of(url)
        for url in (
            "https://api.modelstream.ai",
            "https://api.modelstream.ai/",
            "HTTPS://API.ModelStream.ai:443",
            "https://api.modelstream.ai:443/",
        )
    }
    assert same == {"https://api.modelstream.ai"}
    assert endpoint_of("http://127.0.0.1:8000/") != endpoint_of("http://127.0.0.1:8001")
    assert endpoint_of("http://localhost:80/v1/") == "http://localhost/v1"


# --- synthetic stays synthetic ---------------------------------------------------------------


def test_answers_of_a_hand_started_emulator_are_marked_synthetic_everywhere(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=30)
    run = run_batchrun(job, emulator())
    assert run.returncode == 0, run.stderr
    assert "synthetic" in run.stderr

    out = tmp_path / "out.parquet"
    assert all(row["synthetic"] for row in output(job))
    stats = json.loads(pq.read_metadata(out).metadata[b"batchrun.output_stats"])
    assert stats["synthetic_rows"] == 30
    with sqlite3.connect(tmp_path / "out.parquet.ckpt.sqlite") as conn:
        assert conn.execute("SELECT SUM(synthetic), COUNT(*) FROM answers").fetchone() == (30, 30)
    assert report([str(out)]).synthetic_rows == 30


def test_every_report_format_shows_the_synthetic_count_and_html_a_banner(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=12)
    assert run_batchrun(job, emulator()).returncode == 0
    result = report([str(tmp_path / "out.parquet")])

    assert result.synthetic_rows == 12
    for fmt in FORMATS:
        text = render(result.table, fmt)
        assert "synthetic" in text and "12" in text, fmt
    assert json.loads(render(result.table, "json"))["total"]["synthetic"] == 12
    assert "SYNTHETIC: 12 of these 12 rows" in render_html(result)


# --- the output swap re-checks ----------------------------------------------------------------


def test_a_file_written_at_the_output_path_during_the_run_is_not_replaced(
    tmp_path: Path, emulator
) -> None:
    emu = emulator("--latency-ms", "300")
    job = write_job(tmp_path, rows=8, limits={"concurrency": 2})
    run = start_batchrun(job, emu)
    wait_for_requests(emu, 1)
    foreign = tmp_path / "out.parquet"
    pq.write_table(pa.table({"x": list(range(300))}), foreign)
    before = foreign.read_bytes()

    _, stderr = run.communicate(timeout=60)

    assert run.returncode == 2, stderr
    (line,) = [x for x in stderr.splitlines() if "output.path" in x]
    (kept,) = [p for p in tmp_path.glob("out.*.parquet")]
    assert "out.parquet" in line and kept.name in line and "Traceback" not in stderr
    assert foreign.read_bytes() == before
    assert pq.read_table(kept).num_rows == 8


def test_a_pilot_against_another_endpoint_stops_before_sending(tmp_path: Path, emulator) -> None:
    first, other = emulator(), emulator()
    job = write_job(tmp_path, rows=20)
    assert run_batchrun(job, first, "--limit", "10").returncode == 0
    command = [sys.executable, "-m", "batchrun", "plan", job.name, "--pilot", "3"]
    command += ["--set", f'api.base_url="{other.base_url}"']

    plan = subprocess.run(
        command, cwd=tmp_path, env=batchrun_env(), capture_output=True, text=True, timeout=60
    )

    assert plan.returncode == 2, plan.stderr
    assert first.base_url in plan.stderr and other.base_url in plan.stderr
    assert other.ledger()["requests_received"] == 0

    moved = subprocess.run(
        [*command, "--endpoint-moved"],
        cwd=tmp_path,
        env=batchrun_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert moved.returncode == 0, moved.stderr  # the pilot accepts the move, as run does
    assert other.ledger()["requests_received"] == 3


def test_a_checkpoint_from_before_endpoints_takes_the_first_runs_endpoint(
    tmp_path: Path, emulator
) -> None:
    first, second, third = emulator(), emulator(), emulator()
    job = write_job(tmp_path, rows=10)
    assert run_batchrun(job, first).returncode == 0
    with sqlite3.connect(tmp_path / "out.parquet.ckpt.sqlite") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'origin'")  # as batchrun wrote it before

    adopted = run_batchrun(job, second, moved=False)
    refused = run_batchrun(job, third, moved=False)

    assert adopted.returncode == 0, adopted.stderr
    assert second.ledger()["requests_received"] == 0
    assert refused.returncode == 2 and second.base_url in refused.stderr
