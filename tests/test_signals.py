"""SIGINT / SIGTERM: nothing is sent after the signal, and every answer that arrives is kept.

End to end: the real `batchrun run` in a subprocess against the emulator, with the
emulator's ledger (receive times, bills) as the proof. On a virtual clock: the real
``Pipeline`` and ``Dispatcher`` over a fake transport, stopped at a random moment while
workers wait on the pacer, on a 429 pause, in backoff and on the wire.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_batchrun, start_batchrun, wait_for_requests, write_job

# A signal may find the process between two event-loop turns: this is its allowance.
SEND_ALLOWANCE_S = 0.1


def _statuses(job: Path) -> Counter[str]:
    return Counter(pq.read_table(job.parent / "out.parquet").column("status").to_pylist())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_sends_nothing_more_and_every_billed_answer_is_in_the_checkpoint(
    tmp_path: Path, emulator, signum: signal.Signals
) -> None:
    # 120 RPM with 8 workers: most of them wait on the pacer, some in backoff after a 500.
    emu = emulator("--latency-ms", "500", "--jitter-ms", "300", "--fail-rate", "0.25")
    limits = {"concurrency": 8, "requests_per_minute": 120, "max_attempts": 6}
    job = write_job(tmp_path, rows=40, limits=limits)
    run = start_batchrun(job, emu)
    wait_for_requests(emu, 6)
    signalled_at = time.time()
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=30)

    assert run.returncode == 130, stderr
    ledger = emu.ledger()
    late_s = ledger["last_received_at"] - signalled_at
    print(f"{signum.name}: last request received {late_s:+.3f} s after the signal")
    assert late_s <= SEND_ALLOWANCE_S, stderr
    assert f"{signum.name}: sending nothing more" in stderr
    assert f"{signum.name}: stopped;" in stderr, stderr
    # Every answer billed is in the output (from the checkpoint): a resume pays nothing twice.
    assert _statuses(job)["ok"] == ledger["requests_billed"]
    fast = "limits.requests_per_minute=100000"
    rerun = run_batchrun(job, emu, "--set", fast)
    assert rerun.returncode == 0, rerun.stderr
    assert _statuses(job) == {"ok": 40}
    assert emu.ledger()["duplicates_billed"] == 0
