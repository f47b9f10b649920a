"""SIGINT / SIGTERM under ``--engine ray``: nothing is sent after the signal, and every
answer the workers had on the wire is awaited and saved before Ray is shut down.

End to end: ``batchrun run --engine ray`` in a subprocess (its own local Ray, 2 workers)
against the emulator; the emulator's ledger (receive times, bills) is the proof.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import batchrun_command, batchrun_env, run_batchrun, wait_for_requests, write_job

pytest.importorskip("ray")

pytestmark = pytest.mark.ray

# A signal may find the driver between two steps: this is its allowance (as the local engine's).
SEND_ALLOWANCE_S = 0.1
# Small batches, so both workers have rows of the 40 (the CLI's own BATCH_ROWS is 1024).
DRIVER = (
    "import sys, batchrun.engines.ray.engine as r; r.BATCH_ROWS = 8; "
    "from batchrun.cli import main; main()"
)


def _start(job: Path, emu, *args: str) -> subprocess.Popen[str]:
    command = batchrun_command(job, emu, "--engine", "ray", "--ray-workers", "2", *args)
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *command[3:]],
        cwd=job.parent,
        env={**batchrun_env(), "RAY_USAGE_STATS_ENABLED": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _statuses(job: Path) -> Counter[str]:
    return Counter(pq.read_table(job.parent / "out.parquet").column("status").to_pylist())


def test_a_signal_to_the_ray_driver_sends_nothing_more_and_keeps_every_billed_answer(
    tmp_path: Path, emulator
) -> None:
    # 4 a second, 0.5 s answers: at the signal some sends are on the wire, others wait
    # on the global pace.
    emu = emulator("--latency-ms", "500", "--jitter-ms", "100")
    limits = {"concurrency": 4, "requests_per_minute": 240}
    job = write_job(tmp_path, rows=40, limits=limits)
    run = _start(job, emu)
    wait_for_requests(emu, 6, timeout=60)
    signalled_at = time.time()
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=40)

    assert run.returncode == 130, stderr
    ledger = emu.ledger()
    late_s = ledger["last_received_at"] - signalled_at
    print(f"ray SIGINT: last request received {late_s:+.3f} s after the signal")
    assert late_s <= SEND_ALLOWANCE_S, stderr
    assert "SIGINT: sending nothing more" in stderr, stderr
    assert "SIGINT: stopped;" in stderr, stderr
    # Every answer billed is in the output (the workers saved it before Ray was shut down).
    assert _statuses(job)["ok"] == ledger["requests_billed"], stderr
    # The resume on the local engine (one store for both; no second Ray start-up).
    rerun = run_batchrun(job, emu, "--set", "limits.requests_per_minute=100000")
    assert rerun.returncode == 0, rerun.stderr
    assert _statuses(job) == {"ok": 40}
    assert emu.ledger()["duplicates_billed"] == 0
