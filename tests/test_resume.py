"""Checkpointed resume, end to end: the real `batchrun run` in a subprocess against the
emulator, killed and signalled for real, with the emulator's billing ledger as the
proof of what was paid for.

Resume and the budget across runs; exit codes 0, 2, 3, 130.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    billed_usd,
    review_rows,
    run_batchrun,
    start_batchrun,
    wait_for_requests,
    write_csv,
    write_job,
)

# Columns that honestly differ between two runs of the same job.
RUN_SPECIFIC = ("completed_at", "latency_ms", "attempts")


def output_of(job: Path) -> pa.Table:
    return pq.read_table(job.parent / "out.parquet")


def checkpoint_of(job: Path) -> Path:
    return job.parent / "out.parquet.ckpt.sqlite"


def statuses(table: pa.Table) -> Counter[str]:
    return Counter(table.column("status").to_pylist())


# --- kill -9 ------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_equals_an_uninterrupted_run(
    tmp_path: Path, emulator
) -> None:
    rows, concurrency, latency_s = 400, 8, 0.06
    limits = {"concurrency": concurrency}
    baseline = write_job(tmp_path / "baseline", rows=rows, limits=limits)
    assert run_batchrun(baseline, emulator("--seed", "7")).returncode == 0

    emu = emulator("--seed", "7", "--latency-ms", str(latency_s * 1000), "--jitter-ms", "30")
    job = write_job(tmp_path / "killed", rows=rows, limits=limits)
    moments = random.Random(20261125)
    kills = 3
    for _ in range(kills):
        received = emu.ledger()["requests_received"]
        run = start_batchrun(job, emu)
        wait_for_requests(emu, received + 1)
        time.sleep(moments.uniform(0.05, 0.8))
        assert run.poll() is None, "the run finished before it could be killed"
        run.kill()
        assert run.wait() == -signal.SIGKILL

    with closing(sqlite3.connect(checkpoint_of(job))) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    resumed = run_batchrun(job, emu)

    assert resumed.returncode == 0, resumed.stderr
    assert (
        output_of(job)
        .drop_columns(RUN_SPECIFIC)
        .equals(output_of(baseline).drop_columns(RUN_SPECIFIC))
    )
    # Re-sent after each kill: at most the rows in flight plus a second's worth of answers.
    rate = concurrency / latency_s
    ledger = emu.ledger()
    assert ledger["duplicates_billed"] <= kills * (concurrency + rate * 1.0)
    assert max(ledger["billed_more_than_once"].values(), default=1) <= 1 + kills
    assert ledger["unique_bodies_billed"] == rows


# --- SIGINT / SIGTERM -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_with_130_keeps_what_finished_and_the_rerun_pays_nothing_twice(
    tmp_path: Path, emulator, signum: signal.Signals
) -> None:
    emu = emulator("--latency-ms", "100")
    job = write_job(tmp_path, rows=120, limits={"concurrency": 8})
    run = start_batchrun(job, emu)
    wait_for_requests(emu, 30)
    run.send_signal(signum)

    assert run.wait(timeout=20) == 130
    stopped = statuses(output_of(job))
    assert set(stopped) == {"ok", "pending"}
    assert stopped["ok"] >= 30 - 8
    rerun = run_batchrun(job, emu)
    assert rerun.returncode == 0, rerun.stderr
    assert statuses(output_of(job)) == {"ok": 120}
    assert emu.ledger()["duplicates_billed"] == 0


@pytest.mark.slow
def test_a_signal_during_a_long_stretch_with_nothing_to_send_stops_before_any_request(
    tmp_path: Path, emulator
) -> None:
    # 300k blank rows before 100 real ones: what a resume meets in a long done prefix
    # (rows it must read and check but not send). The signal must not wait for the end.
    rows = [{"id": f"b{i:06d}", "text": ""} for i in range(300_000)] + review_rows(100)
    job = write_job(tmp_path, rows=rows)
    emu = emulator()
    run = start_batchrun(job, emu)
    assert run.stderr is not None
    line = run.stderr.readline()
    while line and "rows, err=" not in line:  # the first progress line: the scan is on
        line = run.stderr.readline()
    run.send_signal(signal.SIGINT)

    assert run.wait(timeout=60) == 130
    assert emu.ledger()["requests_received"] == 0
    assert statuses(output_of(job)) == {"invalid": 300_000, "pending": 100}


# --- what a rerun sends ----------------------------------------------------------------

FINISHED_ROWS = 200


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory, emulators) -> Path:
    """A job run to the end once, for tests to copy (``copy_of``) and run again."""
    job = write_job(tmp_path_factory.mktemp("finished"), rows=FINISHED_ROWS)
    assert run_batchrun(job, emulators.get()).returncode == 0
    return job


def copy_of(job: Path, tmp_path: Path) -> Path:
    """The job's directory (input, output, checkpoint) copied into ``tmp_path``."""
    return shutil.copytree(job.parent, tmp_path / "job") / job.name


def test_a_finished_job_run_again_sends_nothing(
    tmp_path: Path, emulator, finished_job: Path
) -> None:
    job = copy_of(finished_job, tmp_path)
    emu = emulator()

    again = run_batchrun(job, emu)

    assert again.returncode == 0, again.stderr
    assert emu.ledger()["requests_received"] == 0
    assert output_of(job).equals(output_of(finished_job))


@pytest.mark.parametrize(
    "change",
    ['request.prompt="Sentiment of: {text}"', "request.max_completion_tokens=24"],
)
def test_changing_the_request_of_every_row_resends_every_row(
    tmp_path: Path, emulator, finished_job: Path, change: str
) -> None:
    job = copy_of(finished_job, tmp_path)
    emu = emulator()

    changed = run_batchrun(job, emu, "--set", change)

    assert changed.returncode == 0, changed.stderr
    assert emu.ledger()["requests_billed"] == FINISHED_ROWS


def test_editing_50_input_rows_resends_exactly_those_50(
    tmp_path: Path, emulator, finished_job: Path
) -> None:
    job = copy_of(finished_job, tmp_path)
    emu = emulator()
    rows = review_rows(FINISHED_ROWS)
    edited = set(random.Random(3).sample(range(FINISHED_ROWS), 50))
    for i in edited:
        rows[i]["text"] += " (edited)"
    write_csv(job.parent / "input.csv", rows)

    rerun = run_batchrun(job, emu)

    assert rerun.returncode == 0, rerun.stderr
    assert emu.ledger()["requests_billed"] == 50
    before, after = output_of(finished_job).to_pylist(), output_of(job).to_pylist()
    assert [i for i in range(FINISHED_ROWS) if after[i] != before[i]] == sorted(edited)


def test_a_template_change_that_alters_some_rows_resends_exactly_those_rows(
    tmp_path: Path, emulator
) -> None:
    emu = emulator()
    rows = [
        {**row, "note": " (a gift)" if i % 5 == 0 else ""} for i, row in enumerate(review_rows(100))
    ]
    job = write_job(tmp_path, rows=rows)
    assert run_batchrun(job, emu).returncode == 0
    emu.reset()

    rerun = run_batchrun(job, emu, "--set", 'request.prompt="Label: {text}{note}"')

    assert rerun.returncode == 0, rerun.stderr
    assert emu.ledger()["requests_billed"] == 20  # rows whose note renders non-empty


def test_fresh_resends_every_row(tmp_path: Path, emulator, finished_job: Path) -> None:
    job = copy_of(finished_job, tmp_path)
    emu = emulator()

    fresh = run_batchrun(job, emu, "--fresh")

    assert fresh.returncode == 0, fresh.stderr
    assert emu.ledger()["requests_billed"] == FINISHED_ROWS


def test_failed_rows_are_resent_by_retry_failed_and_only_then(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=100, limits={"max_attempts": 1, "max_failed_rows": 100})
    assert run_batchrun(job, emulator("--fail-rate", "0.3", "--seed", "5")).returncode == 0
    first = output_of(job)
    failed = statuses(first)["error"]
    assert 10 < failed < 60
    healthy = emulator()

    normal = run_batchrun(job, healthy)
    assert normal.returncode == 0, normal.stderr
    assert healthy.ledger()["requests_received"] == 0
    assert output_of(job).equals(first)

    retried = run_batchrun(job, healthy, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert healthy.ledger()["requests_billed"] == failed
    assert statuses(output_of(job)) == {"ok": 100}


# --- dedupe ----------------------------------------------------------------------------


def _repetitive_rows(count: int, unique: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "text": f"Same review number {i % unique}."} for i in range(count)]


def test_identical_requests_are_billed_once_and_share_the_answer(tmp_path: Path, emulator) -> None:
    emu = emulator("--latency-ms", "20")
    job = write_job(tmp_path, rows=_repetitive_rows(120, unique=10))
    summary = tmp_path / "summary.json"

    run = run_batchrun(job, emu, "--summary-json", str(summary))

    assert run.returncode == 0, run.stderr
    ledger = emu.ledger()
    assert ledger["requests_billed"] == ledger["unique_bodies_billed"] == 10
    table = output_of(job).to_pylist()
    assert {row["status"] for row in table} == {"ok"}
    by_text: dict[str, set[str]] = {}
    for row in table:
        by_text.setdefault(row["text"], set()).add(row["response"])
    assert all(len(answers) == 1 for answers in by_text.values())
    assert sum(row["attempts"] == 0 and row["cost_usd"] == 0.0 for row in table) == 110
    assert json.loads(summary.read_text())["dedupe_saved_requests"] == 110


def test_dedupe_false_bills_every_row(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=_repetitive_rows(120, unique=10))

    run = run_batchrun(job, emu, "--set", "request.dedupe=false")

    assert run.returncode == 0, run.stderr
    assert emu.ledger()["requests_billed"] == 120


# --- budget ----------------------------------------------------------------------------


def test_budget_stops_with_3_under_the_cap_and_a_higher_cap_finishes_without_rebilling(
    tmp_path: Path, emulator
) -> None:
    emu = emulator("--latency-ms", "10")
    cap = 0.01  # about a third of what the 200 rows cost
    job = write_job(tmp_path, rows=200, limits={"max_cost_usd": cap})

    stopped = run_batchrun(job, emu)

    assert stopped.returncode == 3, stopped.stderr
    assert billed_usd(emu.ledger()) <= cap
    assert 0 < statuses(output_of(job))["ok"] < 200
    raised = run_batchrun(job, emu, "--set", "limits.max_cost_usd=1.0")
    assert raised.returncode == 0, raised.stderr
    assert statuses(output_of(job)) == {"ok": 200}
    assert emu.ledger()["duplicates_billed"] == 0


# --- one run at a time -----------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_refuses_naming_the_first_and_a_killed_run_leaves_no_stale_lock(
    tmp_path: Path, emulator
) -> None:
    emu = emulator("--latency-ms", "200")
    job = write_job(tmp_path, rows=120, limits={"concurrency": 4})  # about 6 s of sending
    first = start_batchrun(job, emu)
    wait_for_requests(emu, 1)

    second = run_batchrun(job, emu, timeout=15)

    assert second.returncode == 2
    assert first.poll() is None, "the second run waited for the first to finish"
    assert f"pid {first.pid}" in second.stderr
    first.kill()
    first.wait()
    third = run_batchrun(job, emulator())  # a fast emulator: only the lock matters here
    assert third.returncode == 0, third.stderr
    assert statuses(output_of(job)) == {"ok": 120}
