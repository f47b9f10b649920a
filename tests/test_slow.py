"""Say why a run is slow, and plan with the limits a run learned (issue 11, "Say why a run
is slow"): an unset ``max_completion_tokens`` reserves 128,000 tokens a request; the limits
learned from the API's headers are kept in the checkpoint; plan's text says what its JSON says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, run_batchrun, write_job

import batchrun.send.dispatch
from batchrun._runner import RunOptions, run_job
from batchrun.job.load import load_job
from batchrun.plan.planner import plan_job
from batchrun.send.advice import reservation_note
from batchrun.store.checkpoint import Checkpoint, CheckpointReader

UNSET = {"max_completion_tokens": 0}  # write_job sets 16; 0 is dropped below
WARNING = "request.max_completion_tokens is unset"


def unset_job(tmp_path: Path, **sections: Any) -> Path:
    """A job without request.max_completion_tokens (write_job sets one)."""
    path = write_job(tmp_path, **sections)
    text = path.read_text().replace("max_completion_tokens = 16\n", "")
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the job's relative paths


# ---------------------------------------------------------------- the rule


def test_the_note_gives_the_figure_and_the_fix_when_the_reservation_binds() -> None:
    note = reservation_note(
        rpm=10_000, tpm=1_000_000, est_prompt_tokens=100, max_completion_tokens=None
    )
    assert note is not None
    assert "~7.8 requests a minute of the 10,000 RPM" in note
    assert "set request.max_completion_tokens" in note


@pytest.mark.parametrize(
    ("rpm", "tpm", "mct"),
    [(10_000, 1_000_000, 500), (5, 1_000_000, None), (10_000, None, None)],
)
def test_no_note_when_the_reservation_does_not_bind(
    rpm: int, tpm: int | None, mct: int | None
) -> None:
    note = reservation_note(rpm=rpm, tpm=tpm, est_prompt_tokens=100, max_completion_tokens=mct)
    assert note is None


# ---------------------------------------------------------------- run


def test_run_says_once_when_learned_limits_make_the_reservation_bind(
    tmp_path: Path, emulator
) -> None:
    # The limits stated, but not what the API counted (no x-ratelimit-remaining-tokens).
    limits = ("x-ratelimit-limit-requests=10000", "x-ratelimit-limit-tokens=1000000")
    emu = emulator(*(arg for value in limits for arg in ("--header-value", value)))
    job = unset_job(tmp_path, rows=4)  # sent before the limits are learned: no pacing wait

    run = run_batchrun(job, emu)

    assert run.returncode == 0, run.stderr
    assert run.stderr.count(WARNING) == 1, run.stderr
    assert "1,000,000 TPM: ~7.8 requests a minute of the 10,000 RPM" in run.stderr


def test_no_warning_when_the_api_shows_it_counts_real_tokens(tmp_path: Path, emulator) -> None:
    # The emulator counts what a request asks for: the prompt alone when
    # max_completion_tokens is unset, far below the 128,000 batchrun reserves.
    run = run_batchrun(unset_job(tmp_path, rows=4), emulator("--rpm", "10000", "--tpm", "1000000"))
    assert run.returncode == 0, run.stderr
    assert WARNING not in run.stderr


def test_run_says_it_at_the_start_when_the_job_sets_the_limits(tmp_path: Path, emulator) -> None:
    limits = {"requests_per_minute": 10_000, "tokens_per_minute": 100_000_000}
    job = unset_job(tmp_path, rows=3, limits=limits)

    run = run_batchrun(job, emulator())

    assert run.returncode == 0, run.stderr
    assert run.stderr.count(WARNING) == 1, run.stderr
    assert "~781.2 requests a minute of the 10,000 RPM" in run.stderr


def test_no_warning_when_max_completion_tokens_is_set(tmp_path: Path, emulator) -> None:
    run = run_batchrun(write_job(tmp_path, rows=4), emulator("--rpm", "10000", "--tpm", "100000"))
    assert run.returncode == 0, run.stderr
    assert WARNING not in run.stderr


# ---------------------------------------------------------------- learned limits kept


def test_learned_limits_round_trip_through_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt.sqlite"
    with Checkpoint.open(path, job_name="x") as ckpt:
        assert not ckpt.learned_limits().known
        ckpt.keep_learned_limits(600, 200_000)
        ckpt.keep_learned_limits(None, 150_000)  # None keeps the kept RPM
    reader = CheckpointReader.open(path, job_name="x")
    assert reader is not None
    with reader:
        kept = reader.learned_limits()
    assert (kept.rpm, kept.tpm) == (600, 150_000)
    assert kept.learned_at == datetime.now(UTC).date().isoformat()


def test_a_run_keeps_the_learned_limits_and_the_next_run_starts_at_them(
    tmp_path: Path, emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulator("--rpm", "600", "--tpm", "2000000")
    job = load_job(write_job(tmp_path, rows=5))
    options = RunOptions(base_url=emu.base_url, api_key=API_KEY)
    run_job(job, options)
    reader = CheckpointReader.open(job.output.checkpoint_path, job_name=job.name)
    assert reader is not None
    with reader:
        assert (reader.learned_limits().rpm, reader.learned_limits().tpm) == (600, 2_000_000)

    at_start: list[tuple[int | None, int | None]] = []
    original = batchrun.send.dispatch.Dispatcher.run

    async def spy(self: Any, *args: Any) -> Any:
        at_start.append((self.learned.rpm, self.learned.tpm))
        return await original(self, *args)

    monkeypatch.setattr(batchrun.send.dispatch.Dispatcher, "run", spy)
    run_job(job, options)
    assert at_start == [(600, 2_000_000)]


# ---------------------------------------------------------------- plan


def test_plan_text_and_json_give_the_same_time(tmp_path: Path) -> None:
    plan = plan_job(load_job(write_job(tmp_path, rows=300, limits={"requests_per_minute": 120})))

    data = plan.to_dict()["time"]

    assert (data["seconds"], data["text"]) == (150, "2 min 30 s")
    assert "2 min 30 s" in plan.render()


def test_plan_uses_the_limits_a_run_learned(tmp_path: Path, emulator) -> None:
    emu = emulator("--rpm", "120", "--tpm", "2000000")
    job = load_job(write_job(tmp_path, rows=300))
    run_job(job, RunOptions(base_url=emu.base_url, api_key=API_KEY, limit=4))

    plan = plan_job(job)

    seconds, bound = plan.time
    today = datetime.now(UTC).date().isoformat()
    assert seconds == 148  # 296 requests at 120 a minute
    assert bound == f"~120 RPM learned from the API on {today}"
    assert f"~120 RPM learned from the API on {today}" in plan.render()
    assert plan.to_dict()["learned_limits"]["rpm"] == 120


def test_plan_says_when_the_unset_max_completion_tokens_sets_the_pace(tmp_path: Path) -> None:
    limits = {"requests_per_minute": 10_000, "tokens_per_minute": 1_000_000}
    plan = plan_job(load_job(unset_job(tmp_path, rows=20, limits=limits)))

    note = plan.to_dict()["time"]["note"]

    assert note is not None and "requests a minute of the 10,000 RPM" in note
    assert "set request.max_completion_tokens" in note
    assert f"slow: {note}" in plan.render()


def test_plan_says_nothing_of_the_kind_when_max_completion_tokens_is_set(tmp_path: Path) -> None:
    limits = {"requests_per_minute": 10_000, "tokens_per_minute": 1_000_000}
    plan = plan_job(load_job(write_job(tmp_path, rows=20, limits=limits)))

    assert plan.to_dict()["time"]["note"] is None
    assert "slow:" not in plan.render()
