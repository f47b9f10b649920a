"""A rerun that finds every input batch done keeps the output it would rewrite unchanged,
and any change the output depends on still rewrites it (issue 14)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pyarrow.parquet as pq
import pytest
from conftest import API_KEY, PRICE, review_rows, run_batchrun, write_csv, write_job

from batchrun._runner import RunOptions, run_job_file
from batchrun._types import Request, RequestResult, Result
from batchrun.engines.base import prepare
from batchrun.job.load import load_job
from batchrun.store.checkpoint import Checkpoint

ROWS = 4100  # two input batches: 4096 rows and 4
SAME = ("rows", "by_status", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd")


def identity(path: Path) -> tuple[int, int]:
    """What a rewrite (a temp file swapped in) changes: the inode and the mtime."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_a_rerun_of_a_finished_job_keeps_its_output_and_reports_it(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=ROWS)
    output, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    first = run_batchrun(job, emu, "--summary-json", str(summary))
    assert first.returncode == 0, first.stderr
    written, before = json.loads(summary.read_text()), identity(output)
    assert "kept" not in first.stderr

    again = run_batchrun(job, emu, "--summary-json", str(summary))
    assert again.returncode == 0, again.stderr
    rerun = json.loads(summary.read_text())
    assert identity(output) == before
    assert "up to date" in again.stderr and "kept" in again.stderr
    assert {k: rerun[k] for k in SAME} == {k: written[k] for k in SAME}
    assert rerun["by_status"] == {"ok": ROWS}
    assert (rerun["sent"], rerun["reused_from_checkpoint"]) == (0, ROWS)
    assert pq.read_table(output).num_rows == ROWS


def _edit_row(tmp_path: Path) -> None:
    rows = review_rows(ROWS)
    rows[4098]["text"] = "edited in the second batch"
    write_csv(tmp_path / "input.csv", rows)


CHANGES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "template": (['request.prompt="Tag: {text}"'], {}),
    "model": (['request.model="gpt-5.5-mini"'], {}),
    "pricing": (['pricing."gpt-5.5".output=20.0'], {}),
    "prefix": (['output.prefix="llm_"'], {}),
    "columns": (['output.parse="json"', 'output.columns={label="string"}'], {}),
    "fresh": ([], {"fresh": True}),
    "limits": (["limits.concurrency=4"], {}),
}


@pytest.mark.parametrize("change", [*CHANGES, "input row", "new answers"])
def test_any_change_rewrites_the_output(
    tmp_path: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=ROWS, **{'pricing."gpt-5.5-mini"': dict(PRICE)})
    monkeypatch.chdir(tmp_path)
    sets = [f'api.base_url="{emu.base_url}"']
    limit = {"limit": 4000} if change == "new answers" else {}
    run_job_file(job, sets=sets, options=RunOptions(api_key=API_KEY, **limit))
    output = tmp_path / "out.parquet"
    if limit:  # --limit writes an output of its own: make it the job's, as a trial left it
        shutil.copy(tmp_path / "out.limit-4000.parquet", output)
    before = identity(output)
    more, flags = CHANGES.get(change, ([], {}))
    if change == "input row":
        _edit_row(tmp_path)
    summary = run_job_file(job, sets=[*sets, *more], options=RunOptions(api_key=API_KEY, **flags))
    assert identity(output) != before
    assert summary.rows == ROWS
    metadata = pq.read_metadata(output).metadata
    assert metadata[b"batchrun.config_hash"].decode() == load_hash(job, [*sets, *more])
    if change == "prefix":
        assert "llm_response" in pq.read_schema(output).names


def load_hash(job: Path, sets: list[str]) -> str:
    return load_job(job, sets=sets).config_hash


def test_retry_failed_with_errors_rewrites_the_output(tmp_path: Path, emulator: Any) -> None:
    job = write_job(tmp_path, rows=100, limits={"max_attempts": 1, "max_failed_rows": 100})
    # One emulator throughout: api.base_url is part of the config hash, so another
    # emulator's address alone would rewrite the output.
    emu = emulator("--fail-rate", "0.3", "--seed", "5")
    assert run_batchrun(job, emu).returncode == 0
    output = tmp_path / "out.parquet"
    before, sent = identity(output), emu.ledger()["requests_received"]
    kept = run_batchrun(job, emu)
    assert kept.returncode == 0, kept.stderr
    assert identity(output) == before  # errors and all, nothing changed
    assert emu.ledger()["requests_received"] == sent

    retried = run_batchrun(job, emu, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert emu.ledger()["requests_received"] > sent
    assert identity(output) != before
    after, table = identity(output), pq.read_table(output)
    assert run_batchrun(job, emu).returncode == 0
    assert identity(output) == after  # the retried answers are what the kept file holds
    assert pq.read_table(output).equals(table)


def test_answers_committed_after_the_output_was_written_rewrite_it(
    tmp_path: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``--retry-failed`` killed after its answers committed but before its output
    pass leaves every batch done: the next run must not keep the output with the errors."""
    job_path = write_job(tmp_path, rows=100, limits={"max_attempts": 1, "max_failed_rows": 100})
    emu = emulator("--fail-rate", "0.3", "--seed", "5")
    assert run_batchrun(job_path, emu).returncode == 0
    output = tmp_path / "out.parquet"
    failed = pq.read_table(output).to_pandas().query("status == 'error'")["id"].astype(str)
    assert len(failed) > 0
    monkeypatch.chdir(tmp_path)
    _commit_ok_answers(job_path, set(failed))  # what the killed retry committed

    after = run_batchrun(job_path, emu)
    assert after.returncode == 0, after.stderr
    assert "kept" not in after.stderr
    rows = pq.read_table(output).to_pandas().set_index(pq.read_table(output)["id"].to_pandas())
    assert (rows.loc[list(failed), "status"] == "ok").all()


def _commit_ok_answers(job_path: Path, keys: set[str]) -> None:
    """An ``ok`` answer for each row of ``keys``, committed by the real checkpoint writer."""
    job = load_job(job_path, sets=[])
    table, builder = prepare(job)
    items: list[RequestResult] = []
    for batch in table.batches(4096):
        ids = [str(v) for v in batch.column("id").to_pylist()]
        for item in builder.build(batch, 0, ids):
            if isinstance(item, Request) and item.key in keys:
                items.append(
                    (
                        item,
                        Result(
                            "ok", response="retried", attempts=1, completed_at=datetime.now(UTC)
                        ),
                    )
                )
    assert len(items) == len(keys)

    async def write() -> None:
        send, receive = anyio.create_memory_object_stream[RequestResult](len(items))
        with Checkpoint.open(job.output.checkpoint_path, job_name=job.name) as ckpt:
            async with send:
                for item in items:
                    send.send_nowait(item)
            await ckpt.write_results(receive)

    anyio.run(write)


def test_an_output_edited_by_someone_else_is_rewritten(tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=50)
    assert run_batchrun(job, emu).returncode == 0
    output = tmp_path / "out.parquet"
    table, footer = pq.read_table(output), pq.read_metadata(output).metadata
    assert b"batchrun.written_from" in footer and b"batchrun.output_stats" in footer
    # Same job name, same stats, but written by another tool: no record of its state.
    metadata = {
        k: v for k, v in footer.items() if k not in (b"batchrun.written_from", b"ARROW:schema")
    }
    pq.write_table(table.replace_schema_metadata(metadata), output)
    before = identity(output)
    os.utime(output, ns=(before[1] - 10**9, before[1] - 10**9))
    before = identity(output)
    assert run_batchrun(job, emu).returncode == 0
    assert identity(output) != before
