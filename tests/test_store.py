"""One store for both engines, end to end with the local engine: the Ray workers' files in
``<checkpoint>.ray/`` are answers and spend like the local checkpoint's.

A Ray worker's file is a checkpoint of the job like the local one, so these tests make
one by moving a local run's checkpoint into ``.ray/`` (tests/test_ray.py runs Ray itself).
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import billed_usd, run_batchrun, write_job

from batchrun.plan.planner import plan_job_file

CKPT = "out.parquet.ckpt.sqlite"


def _as_ray_workers_file(job: Path) -> Path:
    """Move the job's checkpoint where a Ray worker would have written it."""
    ray_dir = job.parent / f"{CKPT}.ray"
    ray_dir.mkdir()
    target = ray_dir / "worker-20250101T000000-1-0.sqlite"
    (job.parent / CKPT).rename(target)
    for suffix in ("-wal", "-shm"):
        (job.parent / f"{CKPT}{suffix}").unlink(missing_ok=True)
    return target


def _first_run(tmp_path: Path, emulator, rows: int = 20, **overrides) -> tuple[Path, float]:
    job = write_job(tmp_path, rows=40, **overrides)
    emu = emulator()
    run = run_batchrun(job, emu, "--limit", str(rows))
    assert run.returncode == 0, run.stderr
    return job, billed_usd(emu.ledger())


def test_a_local_run_sends_nothing_the_ray_workers_answered(tmp_path: Path, emulator) -> None:
    job, _ = _first_run(tmp_path, emulator)
    _as_ray_workers_file(job)
    emu = emulator()

    run = run_batchrun(job, emu)

    assert run.returncode == 0, run.stderr
    assert emu.ledger()["requests_billed"] == 20  # the other 20 came from .ray/
    table = pq.read_table(job.parent / "out.parquet")
    assert set(table["status"].to_pylist()) == {"ok"}
    assert all(cost is not None for cost in table["cost_usd"].to_pylist())


def test_a_local_runs_budget_counts_the_ray_workers_spend(tmp_path: Path, emulator) -> None:
    job, spent = _first_run(tmp_path, emulator)
    _as_ray_workers_file(job)
    emu = emulator()

    # Everything the budget allows was spent by the "Ray" run.
    run = run_batchrun(job, emu, "--set", f"limits.max_cost_usd={spent:.6f}")

    assert run.returncode == 3, run.stderr
    assert emu.ledger()["requests_received"] == 0


def test_plan_sees_the_ray_workers_answers_and_spend(
    tmp_path: Path, emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, spent = _first_run(tmp_path, emulator)
    _as_ray_workers_file(job)
    monkeypatch.chdir(job.parent)

    plan = plan_job_file(job.name)

    assert (plan.counts.done, plan.counts.to_send) == (20, 20)
    assert plan.spent_usd == pytest.approx(spent, rel=1e-6)


def test_fresh_clears_the_ray_workers_files_too(tmp_path: Path, emulator) -> None:
    job, _ = _first_run(tmp_path, emulator)
    ray_file = _as_ray_workers_file(job)
    emu = emulator()

    run = run_batchrun(job, emu, "--fresh")

    assert run.returncode == 0, run.stderr
    assert not ray_file.parent.exists()
    assert emu.ledger()["requests_billed"] == 40


def test_answers_stored_unpriced_count_against_a_later_budget(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=40)
    text = job.read_text()
    job.write_text(re.sub(r'\[pricing\."gpt-5.5"\]\n(.+\n)*', "", text))
    emu = emulator()
    assert run_batchrun(job, emu, "--limit", "20").returncode == 0
    worth = billed_usd(emu.ledger())  # what those 20 answers cost at today's price
    job.write_text(text)  # the model has a price now
    emu = emulator()

    run = run_batchrun(job, emu, "--set", f"limits.max_cost_usd={worth * 0.999:.8f}")

    assert run.returncode == 3, run.stderr
    assert emu.ledger()["requests_received"] == 0
