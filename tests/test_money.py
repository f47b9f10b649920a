"""Money, end to end against the emulator: the budget stops on real spend and counts what
it cannot see, and every figure batchrun writes adds up to the emulator's bill."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import billed_usd, run_batchrun, write_csv, write_job

from batchrun.report.aggregate import report
from batchrun.store.checkpoint import MIGRATIONS, Checkpoint


def output(job: Path) -> list[dict[str, Any]]:
    return pq.read_table(job.parent / "out.parquet").to_pylist()


def paid(rows: list[dict[str, Any]]) -> float:
    return sum(row["cost_usd"] or 0.0 for row in rows)


# --- the budget ------------------------------------------------------------------------


def test_answers_without_usage_keep_their_worst_case_and_the_cap_holds(
    tmp_path: Path, emulator
) -> None:
    emu = emulator("--no-usage-rate", "0.5")
    cap = 0.01
    job = write_job(tmp_path, rows=200, limits={"max_cost_usd": cap, "concurrency": 8})

    run = run_batchrun(job, emu)

    assert run.returncode == 3, run.stderr  # stopped by the budget, not after all 200
    billed = billed_usd(emu.ledger())
    assert billed <= cap, f"overshoot: billed ${billed:.4f} on a ${cap} cap"
    # The checkpoint counts the unknown answers at their worst case, so a later run's
    # budget sees them: its record of spend is at least the bill.
    with Checkpoint.open(tmp_path / "out.parquet.ckpt.sqlite", job_name="test-job") as ckpt:
        assert billed <= ckpt.spent_usd() <= cap


def test_pending_and_invalid_rows_have_a_null_cost(tmp_path: Path, emulator) -> None:
    rows = [{"id": f"r{i}", "text": "" if i == 3 else f"Review {i}: fine."} for i in range(200)]
    job = write_job(tmp_path, rows=rows, limits={"max_cost_usd": 0.005, "concurrency": 4})

    assert run_batchrun(job, emulator()).returncode == 3

    by_status: dict[str, set[Any]] = {}
    for row in output(job):
        by_status.setdefault(row["status"], set()).add(row["cost_usd"])
    assert by_status["pending"] == {None} and by_status["invalid"] == {None}
    assert None not in by_status["ok"]


def test_unset_max_completion_tokens_runs_on_money_not_on_reservations(
    tmp_path: Path, emulator
) -> None:
    # Each request reserves $1.28 (128,000 completion tokens); $4 holds three at a time,
    # and the job's real cost is a few cents, so it must finish.
    emu = emulator()
    job = write_job(tmp_path, rows=60, limits={"max_cost_usd": 4.0, "concurrency": 8})
    text = job.read_text().replace("max_completion_tokens = 16\n", "")
    job.write_text(text, encoding="utf-8")

    run = run_batchrun(job, emu)

    assert run.returncode == 0, run.stderr
    assert {row["status"] for row in output(job)} == {"ok"}
    assert emu.ledger()["requests_billed"] == 60
    assert billed_usd(emu.ledger()) <= 4.0


# --- the bill --------------------------------------------------------------------------


def test_cost_after_retry_failed_equals_the_ledger(tmp_path: Path, emulator) -> None:
    # Answers cut off at 2 tokens never parse as JSON: every row is a parse_error, and paid for.
    emu = emulator()
    job = write_job(
        tmp_path,
        rows=40,
        request={"max_completion_tokens": 2},
        output={"parse": "json", "columns": {"label": "string"}},
    )
    assert run_batchrun(job, emu).returncode == 1
    assert run_batchrun(job, emu, "--retry-failed").returncode == 1

    rows = output(job)
    assert {row["error_type"] for row in rows} == {"parse_error"}
    assert emu.ledger()["requests_billed"] == 80
    assert paid(rows) == pytest.approx(billed_usd(emu.ledger()), rel=1e-9)
    with Checkpoint.open(tmp_path / "out.parquet.ckpt.sqlite", job_name="test-job") as ckpt:
        assert ckpt.spent_usd() == pytest.approx(billed_usd(emu.ledger()), rel=1e-9)


def repeated_rows(count: int, repeats: int) -> list[dict[str, str]]:
    distinct = count - repeats
    return [{"id": f"r{i:04d}", "text": f"Review {i % distinct}: ok."} for i in range(count)]


def test_report_tokens_are_the_billed_ones_with_repeats(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=repeated_rows(400, 60))
    assert run_batchrun(job, emu).returncode == 0
    tokens = emu.ledger()["tokens"]

    total = report([str(job.parent / "out.parquet")]).table.iloc[-1]

    assert (total["prompt_tokens"], total["completion_tokens"], total["shared"]) == (
        tokens["prompt"],
        tokens["completion"],
        60,
    )
    # The documented Parquet way: sum the rows that are not shared.
    table = pq.read_table(job.parent / "out.parquet")
    billed = table.filter(pc.invert(table["shared"]))
    assert pc.sum(billed["prompt_tokens"]).as_py() == tokens["prompt"]


def test_summary_shows_this_runs_spend_and_the_outputs_cost(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=300)
    assert run_batchrun(job, emu, "--limit", "264").returncode == 0
    before = billed_usd(emu.ledger())

    run = run_batchrun(job, emu, "--summary-json", "summary.json")

    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sent"] == 36
    assert summary["run_cost_usd"] == pytest.approx(billed_usd(emu.ledger()) - before)
    assert summary["cost_usd"] == pytest.approx(billed_usd(emu.ledger()))
    metadata = pq.read_metadata(tmp_path / "out.parquet").metadata
    assert json.loads(metadata[b"batchrun.summary"])["run_cost_usd"] == pytest.approx(
        summary["run_cost_usd"]
    )
    assert "this run spent" in run.stderr + run.stdout


def test_retry_failed_sends_identical_failed_requests_once(tmp_path: Path, emulator) -> None:
    # A second input file repeats the first file's first 50 texts: its rows are reached
    # long after those requests failed again and were committed.
    emu = emulator("--fail-rate", "1.0", "--latency-ms", "10")
    parts = tmp_path / "parts"
    parts.mkdir()
    write_csv(parts / "p1.csv", [{"id": f"a{i}", "text": f"T {i}"} for i in range(300)])
    write_csv(parts / "p2.csv", [{"id": f"b{i}", "text": f"T {i}"} for i in range(50)])
    job = write_job(
        tmp_path,
        rows=1,
        input={"path": "parts/*.csv"},
        limits={"max_attempts": 1, "concurrency": 2},
    )
    assert run_batchrun(job, emu).returncode == 1
    assert emu.ledger()["requests_received"] == 300

    run = run_batchrun(job, emu, "--retry-failed", "--summary-json", "summary.json")

    assert run.returncode == 1
    assert emu.ledger()["requests_received"] == 600  # each failed request once more
    assert json.loads((tmp_path / "summary.json").read_text())["sent"] == 300


# --- an old checkpoint -----------------------------------------------------------------


def test_a_checkpoint_from_before_charges_keeps_its_spend(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    Checkpoint.open(path, job_name="j").close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE charges")
    db.execute("DROP TABLE answers")
    MIGRATIONS[0](db)  # the answers table as m001 made it (before m006's layout)
    # ... and so from before binary keys (m004): its fingerprints are text.
    db.execute(
        "DELETE FROM _migrations WHERE name IN"
        " ('m003_charges', 'm004_binary_keys', 'm006_compact_answers',"
        " 'm008_synthetic_answers', 'm009_reasks')"
    )
    db.execute(
        "INSERT INTO answers (fingerprint, owner_key, status, cost_usd, attempts)"
        " VALUES ('v1:a', 'a', 'ok', 0.25, 1), ('v1:b', 'b', 'error', NULL, 1)"
    )
    db.commit()
    db.close()

    with Checkpoint.open(path, job_name="j") as ckpt:
        assert ckpt.spent_usd() == 0.25
        assert ckpt.lookup(["v1:a"])["v1:a"].result.cost_usd == 0.25


def test_emulator_no_usage_fault_bills_but_strips_usage(emulator) -> None:
    emu = emulator("--no-usage-rate", "1.0")
    code = (
        "import openai, sys\n"
        "c = openai.OpenAI(base_url=sys.argv[1] + '/v1', api_key='sk-x')\n"
        "m = [{'role': 'user', 'content': 'hi'}]\n"
        "a = c.chat.completions.create(model='gpt-5.5', messages=m)\n"
        "s = c.chat.completions.create(model='gpt-5.5', messages=m, stream=True,"
        " stream_options={'include_usage': True})\n"
        "print(a.usage is None, all(ch.usage is None for ch in s))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, emu.base_url], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.split() == ["True", "True"], done.stderr
    assert emu.ledger()["requests_billed"] == 2 and emu.ledger()["faults"]["no_usage"] == 2
