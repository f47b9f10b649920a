"""Write-ahead spend: no stop loses an attempt the API billed, so a budget holds over runs.

End to end: the real `batchrun run` in a subprocess against the emulator, stopped by the
budget while rows wait to retry, by kill -9 and by two SIGINTs while every answer is
slower than the stop; the emulator's billing ledger is the proof. What the checkpoint
counts as spent must cover what was billed, and a second run on a healthy server must
keep the total billed within ``limits.max_cost_usd``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from conftest import billed_usd, run_batchrun, start_batchrun, wait_for_requests, write_job

from batchrun.emulator import EmulatorProcess
from batchrun.store.checkpoint import CheckpointReader


def _spent(job: Path) -> float:
    reader = CheckpointReader.open(job.parent / "out.parquet.ckpt.sqlite", job_name="test-job")
    assert reader is not None
    with reader:
        return reader.spent_usd()


def _wait_billed(emu: EmulatorProcess, at_least: int) -> float:
    deadline = time.monotonic() + 20
    while (ledger := emu.ledger())["requests_billed"] < at_least:
        assert time.monotonic() < deadline, ledger
        time.sleep(0.01)
    return billed_usd(ledger)


def test_a_budget_stop_counts_the_attempts_of_rows_waiting_to_retry(
    tmp_path: Path, emulator
) -> None:
    # Most connections drop after billing: at the budget stop, many rows sleep in backoff
    # holding attempts that may have been billed.
    emu = emulator("--drop-rate", "0.6", "--latency-ms", "100")
    budget = 0.04
    limits = {"concurrency": 32, "max_attempts": 6, "max_cost_usd": budget}
    job = write_job(tmp_path, rows=400, limits=limits)

    first = run_batchrun(job, emu)
    assert first.returncode == 3, first.stderr
    billed = billed_usd(emu.ledger())
    assert _spent(job) >= billed

    second = run_batchrun(job, emu)
    assert second.returncode == 3, second.stderr
    assert billed_usd(emu.ledger()) <= budget


def _stopped_on_the_wire_then_finished(tmp_path: Path, emulator, stop: str) -> tuple[float, float]:
    """Run with every answer slower than the stop, stop it with ``stop``, then finish the
    job on a healthy server; (billed by the slow one, billed in all)."""
    slow, healthy = emulator("--latency-ms", "8000"), emulator()
    budget = 0.002  # well under the job's cost: the second run stops on money
    job = write_job(tmp_path, rows=40, limits={"concurrency": 8, "max_cost_usd": budget})
    run = start_batchrun(job, slow)
    wait_for_requests(slow, 8)
    billed = _wait_billed(slow, 8)
    if stop == "kill -9":
        run.kill()
    else:  # the second signal stops at once, cutting the sends on the wire
        run.send_signal(signal.SIGINT)
        time.sleep(0.2)
        run.send_signal(signal.SIGINT)
    run.communicate(timeout=30)
    assert run.returncode == (-signal.SIGKILL if stop == "kill -9" else 130)
    assert _spent(job) >= billed

    finish = run_batchrun(job, healthy)
    assert finish.returncode == 3, finish.stderr
    return billed, billed + billed_usd(healthy.ledger())


def test_kill_9_with_every_answer_on_the_wire_keeps_them_in_the_budget(
    tmp_path: Path, emulator
) -> None:
    _, billed_in_all = _stopped_on_the_wire_then_finished(tmp_path, emulator, "kill -9")
    assert billed_in_all <= 0.002


def test_two_sigints_cutting_the_sends_on_the_wire_keep_them_in_the_budget(
    tmp_path: Path, emulator
) -> None:
    _, billed_in_all = _stopped_on_the_wire_then_finished(tmp_path, emulator, "SIGINT twice")
    assert billed_in_all <= 0.002
