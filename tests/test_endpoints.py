"""Answers stay tied to what gave them: the row that holds one in the output (positional
inputs edited between runs), the endpoint that answered, the emulator's synthetic
answers, and the file that stands at ``output.path`` when the output is swapped in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from conftest import billed_usd, review_rows, run_batchrun, write_csv, write_job

from batchrun.report.aggregate import report


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
