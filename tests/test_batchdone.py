"""Resume skips whole input batches the checkpoint has every answer for (``store.batchdone``),
and still sends exactly the rows an edit changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import API_KEY, PRICE, review_rows, run_batchrun, write_csv, write_job

from batchrun._runner import RunOptions, run_job_file
from batchrun.engines.local import LocalRun
from batchrun.job.load import load_job
from batchrun.send.requests import RequestBuilder
from batchrun.store.batchdone import batch_digest

ROWS = 4100  # two input batches: 4096 rows and 4


def sent_by(job: Path, emu: Any, *args: str) -> int:
    before = emu.ledger()["requests_received"]
    done = run_batchrun(job, emu, "--quiet", *args)
    assert done.returncode == 0, done.stderr
    return int(emu.ledger()["requests_received"] - before)


def test_a_rerun_of_a_finished_job_builds_rows_only_for_the_output(
    tmp_path: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=ROWS)
    monkeypatch.chdir(tmp_path)
    options = RunOptions(api_key=API_KEY)
    sets = [f'api.base_url="{emu.base_url}"']
    assert run_job_file(job, sets=sets, options=options).sent == ROWS
    walked = count_builds(monkeypatch)
    # Limits are no part of a request: the batches are still known as done.
    summary = run_job_file(job, sets=[*sets, "limits.concurrency=8"], options=options)
    assert (summary.sent, summary.reused_from_checkpoint) == (0, ROWS)
    assert summary.by_status == {"ok": ROWS}
    # Only the output pass walked the rows (keys and fingerprints, no bodies); the
    # producer skipped both batches unbuilt.
    assert walked == [("keyed", 4096), ("keyed", 4)]


def test_edits_send_again_exactly_the_rows_they_change(tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=ROWS, **{'pricing."gpt-5.5-mini"': dict(PRICE)})
    assert sent_by(job, emu) == ROWS
    assert sent_by(job, emu) == 0

    rows = review_rows(ROWS)
    rows[10]["text"] = "edited in the first batch"
    rows[4098]["text"] = "edited in the second batch"
    write_csv(tmp_path / "input.csv", rows)
    assert sent_by(job, emu) == 2
    assert sent_by(job, emu) == 0

    assert sent_by(job, emu, "--set", 'request.prompt="Tag: {text}"') == ROWS
    assert sent_by(job, emu, "--set", 'request.prompt="Tag: {text}"') == 0
    assert sent_by(job, emu, "--set", 'request.model="gpt-5.5-mini"') == ROWS
    assert sent_by(job, emu) == 0  # back to the first template and model: all answered


def test_the_digest_names_the_rows_their_place_and_the_job() -> None:
    batch = pa.record_batch({"id": ["a", "b"], "text": ["x", "y"]})
    same = pa.record_batch({"id": ["a", "b"], "text": ["x", "y"]})
    edited = pa.record_batch({"id": ["a", "b"], "text": ["x", "z"]})
    digest = batch_digest(batch, 0, "job")
    assert batch_digest(same, 0, "job") == digest
    assert batch_digest(edited, 0, "job") != digest
    assert batch_digest(batch, 2, "job") != digest  # keys may be positions
    assert batch_digest(batch, 0, "other") != digest
    # A slice carries its parent's buffers: never equal to other rows, at worst a miss.
    assert batch_digest(edited.slice(0, 1), 0, "job") != batch_digest(batch.slice(1), 0, "job")


def test_after_a_kill_9_the_resume_records_the_batches_it_finds_answered(
    tmp_path: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=ROWS)
    monkeypatch.chdir(tmp_path)
    options = RunOptions(api_key=API_KEY)
    sets = [f'api.base_url="{emu.base_url}"']
    assert run_job_file(job, sets=sets, options=options).sent == ROWS
    # A kill -9 before the output pass: no batch recorded, and r04097 (second batch) unsent.
    checkpoint = load_job(job).output.checkpoint_path
    with sqlite3.connect(checkpoint) as conn:
        conn.execute("DELETE FROM done_batches")
        conn.execute("DELETE FROM answers WHERE owner_key = 'r04097'")

    def killed(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("killed before the output pass")

    with monkeypatch.context() as patched:
        patched.setattr(LocalRun, "_write_output", killed)
        with pytest.raises(RuntimeError, match="killed"):
            run_job_file(job, sets=sets, options=options)
    assert emu.ledger()["requests_received"] == ROWS + 1  # r04097 only
    with sqlite3.connect(checkpoint) as conn:
        recorded = conn.execute("SELECT requests, invalid, errors FROM done_batches").fetchall()
    assert recorded == [(4096, 0, 1)]  # the first batch (perhaps with errors: not read)

    walked = count_builds(monkeypatch)
    summary = run_job_file(job, sets=sets, options=options)
    assert (summary.sent, summary.reused_from_checkpoint) == (0, ROWS)
    # The producer skipped the first batch unbuilt; of the second it built one row (a
    # probe) and found every fingerprint answered; the output pass keyed every row.
    assert walked == [("build", 1), ("keyed", 4096), ("keyed", 4)]

    # An edit in the batch recorded during the resume is still sent, and only it.
    rows = review_rows(ROWS)
    rows[7]["text"] = "edited after the resume recorded its batch"
    write_csv(tmp_path / "input.csv", rows)
    assert run_job_file(job, sets=sets, options=options).sent == 1


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every ``RequestBuilder.build`` and ``.keyed`` call from now on: (which, rows)."""
    walked: list[tuple[str, int]] = []
    for name in ("build", "keyed"):
        original = getattr(RequestBuilder, name)

        def counting(
            self: RequestBuilder, batch: pa.RecordBatch, *args: Any, _name: str = name,
            _original: Any = original,
        ) -> Any:  # fmt: skip
            walked.append((_name, batch.num_rows))
            return _original(self, batch, *args)

        monkeypatch.setattr(RequestBuilder, name, counting)
    return walked
