"""The Ray engine's money over runs: write-ahead spend across workers, and
``--retry-failed`` sending each failed request once a run, whatever the workers.

One local Ray instance serves the module; each run is the driver in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, billed_usd, write_job

ray = pytest.importorskip("ray")

from batchrun._runner import RunOptions, RunSummary, run_job  # noqa: E402
from batchrun.emulator import EmulatorProcess  # noqa: E402
from batchrun.job.load import load_job  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    from batchrun.engines.ray.engine import ray_session

    with ray_session(None):
        yield ray.get_runtime_context().gcs_address


def _run(job_file: Path, emu: EmulatorProcess, **options: Any) -> RunSummary:
    job = load_job(job_file)
    return run_job(job, RunOptions(base_url=emu.base_url, api_key=API_KEY, engine="ray", **options))


def test_retry_failed_sends_each_failed_request_once_over_four_workers(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator
) -> None:
    # 64 requests, each in four rows of four different batches of 16 rows.
    monkeypatch.setattr("batchrun.engines.ray.engine.BATCH_ROWS", 16)
    monkeypatch.chdir(tmp_path)
    emu = emulator("--fail-rate", "1.0", "--latency-ms", "20")
    rows = [{"id": f"r{i:04d}", "text": f"T {i % 64}"} for i in range(256)]
    job = write_job(tmp_path, rows=rows, limits={"max_attempts": 1, "concurrency": 8})
    first = _run(job, emu, ray_workers=4)
    assert first.exit_code == 1
    assert emu.ledger()["requests_received"] == 64

    again = _run(job, emu, ray_workers=4, retry_failed=True)

    assert again.exit_code == 1
    assert emu.ledger()["requests_received"] == 128  # each failed request once more


def test_a_budget_stop_with_rows_waiting_to_retry_keeps_the_budget_over_two_runs(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator
) -> None:
    monkeypatch.setattr("batchrun.engines.ray.engine.BATCH_ROWS", 64)
    monkeypatch.chdir(tmp_path)
    emu = emulator("--drop-rate", "0.6", "--latency-ms", "100")
    budget = 0.04
    limits = {"concurrency": 32, "max_attempts": 6, "max_cost_usd": budget}
    job = write_job(tmp_path, rows=400, limits=limits)
    assert _run(job, emu, ray_workers=2).exit_code == 3
    _run(job, emu, ray_workers=2)
    assert billed_usd(emu.ledger()) <= budget
