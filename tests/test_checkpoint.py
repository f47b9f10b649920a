"""The checkpoint: real SQLite files, real subprocesses, real signals."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from batchrun._errors import JobError, LockedError
from batchrun._types import Charge, Request, Result
from batchrun.store.checkpoint import COMMIT_ROWS, MIGRATIONS, Checkpoint

Item = tuple[Request, Result]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def ckpt_path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "run.parquet.ckpt.sqlite"


@pytest.fixture
def ckpt(ckpt_path: Path) -> Iterator[Checkpoint]:
    with Checkpoint.open(ckpt_path, job_name="job") as opened:
        yield opened


def request(key: str) -> Request:
    return Request(
        key, {"messages": []}, f"v1:{key}", est_prompt_tokens=10, max_completion_tokens=5
    )


def full_result(**changes: object) -> Result:
    result = Result(
        status="ok",
        response="positive",
        reasoning_content="thinking",
        tool_calls='[{"id": "t1"}]',
        finish_reason="stop",
        model="gpt-5.5",
        response_id="chatcmpl-1",
        prompt_tokens=100,
        completion_tokens=20,
        total_tokens=120,
        cached_tokens=40,
        reasoning_tokens=8,
        attempts=2,
        latency_ms=812.5,
        completed_at=datetime(2026, 11, 25, 10, 30, 1, 123456, tzinfo=UTC),
    )
    return replace(result, **changes)


def paid(cost: float) -> Result:
    """An answer as the dispatcher hands it over: priced, with this run's one charge."""
    return full_result(cost_usd=cost, charges=(Charge(cost, usage_known=True, at=1.0),))


def failed_result() -> Result:
    return Result(status="error", error_type="http_500", error_message="boom", attempts=6)


async def write_all(
    ckpt: Checkpoint, items: Sequence[Item], on_commit: Callable[[list[str]], None] | None = None
) -> None:
    send, receive = anyio.create_memory_object_stream[Item](16)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ckpt.write_results, receive, on_commit)
        async with send:
            for item in items:
                await send.send(item)


# ---------------------------------------------------------------- round trip


@pytest.mark.anyio
async def test_a_result_round_trips_with_every_field(ckpt: Checkpoint) -> None:
    result = full_result(
        completed_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2))),
        cost_usd=0.00035,
    )
    await write_all(ckpt, [(request("r1"), result)])
    answer = ckpt.lookup(["v1:r1"])["v1:r1"]
    assert answer.owner_key == "r1"
    assert answer.result == result
    assert answer.result.completed_at is not None
    assert answer.result.completed_at.tzinfo == UTC


@pytest.mark.anyio
async def test_completed_at_round_trips_to_the_microsecond(ckpt: Checkpoint) -> None:
    times = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 25, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2199, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2030, 6, 1, 12, 0, 0, 1),  # naive is taken as UTC
    ]
    items = [(request(f"t{i}"), full_result(completed_at=t)) for i, t in enumerate(times)]
    await write_all(ckpt, items)
    found = ckpt.lookup([f"v1:t{i}" for i in range(len(times))])
    stored = [found[f"v1:t{i}"].result.completed_at for i in range(len(times))]
    assert stored == [t.replace(tzinfo=UTC) for t in times]


@pytest.mark.anyio
async def test_a_result_with_only_defaults_round_trips(ckpt: Checkpoint) -> None:
    await write_all(ckpt, [(request("r1"), failed_result())])
    assert ckpt.lookup(["v1:r1"])["v1:r1"].result == failed_result()


def test_every_result_field_is_a_column(ckpt: Checkpoint, ckpt_path: Path) -> None:
    columns = {row[1] for row in sqlite3.connect(ckpt_path).execute("PRAGMA table_info(answers)")}
    assert {f.name for f in fields(Result)} - {"charges"} | {"fingerprint", "owner_key"} <= columns


@pytest.mark.anyio
async def test_lookup_returns_only_answered_fingerprints(ckpt: Checkpoint) -> None:
    await write_all(ckpt, [(request(f"r{i}"), paid(0.1)) for i in range(2000)])
    wanted = [f"v1:r{i}" for i in range(1990, 2010)] * 2  # spans chunks, with duplicates
    assert sorted(ckpt.lookup(wanted)) == sorted(f"v1:r{i}" for i in range(1990, 2000))
    assert len(ckpt.lookup([f"v1:r{i}" for i in range(2000)])) == 2000


@pytest.mark.anyio
async def test_include_failed_false_omits_errors(ckpt: Checkpoint) -> None:
    await write_all(ckpt, [(request("ok"), paid(0.1)), (request("bad"), failed_result())])
    assert set(ckpt.lookup(["v1:ok", "v1:bad"])) == {"v1:ok", "v1:bad"}
    assert set(ckpt.lookup(["v1:ok", "v1:bad"], include_failed=False)) == {"v1:ok"}


@pytest.mark.anyio
async def test_a_new_answer_replaces_the_old_one(ckpt: Checkpoint) -> None:
    await write_all(ckpt, [(request("r1"), failed_result())])
    await write_all(ckpt, [(request("r1"), paid(0.2))])
    assert ckpt.lookup(["v1:r1"])["v1:r1"].result.status == "ok"
    assert ckpt.counts() == {"ok": 1}


@pytest.mark.anyio
async def test_spent_usd_sums_every_answer_across_runs(ckpt_path: Path) -> None:
    with Checkpoint.open(ckpt_path, job_name="job") as first:
        assert first.spent_usd() == 0.0
        await write_all(first, [(request("a"), paid(0.25)), (request("b"), failed_result())])
    with Checkpoint.open(ckpt_path, job_name="job") as second:
        await write_all(second, [(request("c"), paid(0.5))])
        assert second.spent_usd() == pytest.approx(0.75)
        assert second.counts() == {"ok": 2, "error": 1}


@pytest.mark.anyio
async def test_fresh_starts_over(ckpt_path: Path) -> None:
    with Checkpoint.open(ckpt_path, job_name="job") as first:
        await write_all(first, [(request("a"), paid(0.25))])
    with Checkpoint.open(ckpt_path, job_name="job", fresh=True) as again:
        assert again.lookup(["v1:a"]) == {}
        assert again.spent_usd() == 0.0


# ---------------------------------------------------------------- the file


def test_open_creates_parent_directories_and_a_wal_database(
    ckpt: Checkpoint, ckpt_path: Path
) -> None:
    assert ckpt_path.is_file()
    (mode,) = sqlite3.connect(ckpt_path).execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_migrations_are_recorded_in_order_and_applied_once(ckpt_path: Path) -> None:
    Checkpoint.open(ckpt_path, job_name="job").close()
    Checkpoint.open(ckpt_path, job_name="job").close()
    rows = sqlite3.connect(ckpt_path).execute("SELECT name FROM _migrations ORDER BY rowid")
    assert [name for (name,) in rows] == [fn.__name__ for fn in MIGRATIONS]


@pytest.mark.anyio
async def test_a_checkpoint_with_text_fingerprints_is_migrated_to_binary_keys(
    ckpt_path: Path,
) -> None:
    """A checkpoint written before m004 holds 67-character text keys: it is rewritten,
    and every answer and charge is found again under the same fingerprint."""
    real = "v1:" + "0123456789abcdef" * 4  # a sha256 fingerprint, as send.requests makes
    Checkpoint.open(ckpt_path, job_name="job").close()
    db = sqlite3.connect(ckpt_path)
    db.execute("DROP TABLE answers")
    MIGRATIONS[0](db)  # the answers table as m001 made it (before m006's layout)
    later = ("m004_binary_keys", "m006_compact_answers", "m008_synthetic_answers", "m009_reasks")
    db.execute("DELETE FROM _migrations WHERE name IN (?, ?, ?, ?)", later)
    db.execute(
        "INSERT INTO answers (fingerprint, owner_key, status, cost_usd, attempts)"
        " VALUES (?, 'a', 'ok', 0.25, 1), ('v1:b', 'b', 'error', NULL, 1)",
        (real,),
    )
    db.execute("INSERT INTO charges VALUES (?, 0.25, 1, 0)", (real,))
    db.commit()
    db.close()

    with Checkpoint.open(ckpt_path, job_name="job") as ckpt:
        found = ckpt.lookup([real, "v1:b"])
        assert found[real].result.cost_usd == 0.25 and found["v1:b"].result.status == "error"
        assert ckpt.answered([real, "v1:b", "v1:c"]) == {real, "v1:b"}
        assert ckpt.spent_usd() == 0.25
        await write_all(ckpt, [(Request("a", {}, real, 1, 1), paid(0.5))])  # a retry replaces
        assert ckpt.lookup([real])[real].result.cost_usd == 0.75  # both charges, one key
    db = sqlite3.connect(ckpt_path)
    stored = db.execute("SELECT fingerprint FROM charges").fetchall()
    assert stored == [(bytes.fromhex(real[3:]),)]  # the new charge is the answer's own (m006)
    answer = db.execute("SELECT paid_usd FROM answers WHERE fingerprint = ?", stored[0])
    assert answer.fetchall() == [(0.5,)]


def test_a_checkpoint_from_a_newer_batchrun_is_refused_not_misread(ckpt_path: Path) -> None:
    Checkpoint.open(ckpt_path, job_name="job").close()
    db = sqlite3.connect(ckpt_path)
    db.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', '')")
    db.commit()
    db.close()
    with pytest.raises(JobError, match=r"unknown schema migrations.*m999_from_the_future"):
        Checkpoint.open(ckpt_path, job_name="job")


def test_a_corrupt_file_is_a_job_error_naming_it_and_fresh_recovers(ckpt_path: Path) -> None:
    ckpt_path.parent.mkdir(parents=True)
    ckpt_path.write_bytes(b"this is not a database" * 400)
    with pytest.raises(JobError, match=str(ckpt_path)):
        Checkpoint.open(ckpt_path, job_name="job")
    with Checkpoint.open(ckpt_path, job_name="job", fresh=True) as recovered:
        assert recovered.counts() == {}


def test_a_checkpoint_of_another_job_is_refused(ckpt_path: Path) -> None:
    Checkpoint.open(ckpt_path, job_name="job-a").close()
    with pytest.raises(JobError, match="belongs to job 'job-a', not 'job-b'"):
        Checkpoint.open(ckpt_path, job_name="job-b")


def test_a_closed_checkpoint_refuses_use(ckpt_path: Path) -> None:
    ckpt = Checkpoint.open(ckpt_path, job_name="job")
    ckpt.close()
    ckpt.close()
    with pytest.raises(JobError, match="closed"):
        ckpt.lookup(["v1:a"])


# ---------------------------------------------------------------- the writer task


@pytest.mark.anyio
async def test_an_answer_is_committed_within_a_second_while_the_stream_stays_open(
    ckpt: Checkpoint,
) -> None:
    committed = anyio.Event()
    send, receive = anyio.create_memory_object_stream[Item](16)
    async with anyio.create_task_group() as tg, send:
        tg.start_soon(ckpt.write_results, receive, lambda fps: committed.set())
        started = time.monotonic()
        await send.send((request("r1"), paid(0.1)))
        with anyio.fail_after(1.0):
            await committed.wait()
        assert time.monotonic() - started >= 0.4  # it batched, rather than commit per row
        assert "v1:r1" in ckpt.lookup(["v1:r1"])


@pytest.mark.anyio
async def test_a_full_batch_commits_at_once(ckpt: Checkpoint) -> None:
    batches: list[list[str]] = []
    send, receive = anyio.create_memory_object_stream[Item](COMMIT_ROWS)
    async with anyio.create_task_group() as tg, send:
        tg.start_soon(ckpt.write_results, receive, batches.append)
        for i in range(COMMIT_ROWS):
            await send.send((request(f"r{i}"), paid(0.1)))
        with anyio.fail_after(0.4):  # well before the interval is up
            while not batches:
                await anyio.sleep(0.01)
    assert len(batches[0]) == COMMIT_ROWS


@pytest.mark.anyio
async def test_closing_the_stream_commits_the_rest_at_once(ckpt: Checkpoint) -> None:
    committed: list[str] = []
    started = time.monotonic()
    await write_all(ckpt, [(request(f"r{i}"), paid(0.1)) for i in range(3)], committed.extend)
    assert time.monotonic() - started < 0.4
    assert committed == ["v1:r0", "v1:r1", "v1:r2"]
    assert len(ckpt.lookup(committed)) == 3


@pytest.mark.anyio
async def test_cancellation_commits_what_the_writer_holds(ckpt: Checkpoint) -> None:
    send, receive = anyio.create_memory_object_stream[Item](0)  # send returns once received
    async with anyio.create_task_group() as tg:
        tg.start_soon(ckpt.write_results, receive)
        await send.send((request("held"), paid(0.1)))
        assert ckpt.lookup(["v1:held"]) == {}  # held, not yet committed
        tg.cancel_scope.cancel()
    assert "v1:held" in ckpt.lookup(["v1:held"])


@pytest.mark.anyio
async def test_cancellation_also_commits_answers_buffered_in_the_stream(ckpt: Checkpoint) -> None:
    send, receive = anyio.create_memory_object_stream[Item](100)
    async with anyio.create_task_group() as tg:
        for i in range(50):
            send.send_nowait((request(f"r{i}"), paid(0.1)))
        tg.start_soon(ckpt.write_results, receive)
        tg.cancel_scope.cancel()
    assert len(ckpt.lookup([f"v1:r{i}" for i in range(50)])) == 50


@pytest.mark.anyio
async def test_the_writer_closes_its_stream_so_producers_do_not_hang(ckpt: Checkpoint) -> None:
    send, receive = anyio.create_memory_object_stream[Item](0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ckpt.write_results, receive)
        await anyio.sleep(0)
        tg.cancel_scope.cancel()
    with pytest.raises(anyio.BrokenResourceError):
        await send.send((request("late"), paid(0.1)))


# ---------------------------------------------------------------- lock, in real processes

CHILD_PRELUDE = """
import sys, time
from pathlib import Path
from batchrun.store.checkpoint import Checkpoint
from batchrun._types import Charge, Request, Result
path = Path(sys.argv[1])
"""

HOLD_LOCK = (
    CHILD_PRELUDE
    + """
ckpt = Checkpoint.open(path, job_name="job")
print("ready", flush=True)
time.sleep(60)
"""
)


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready", "child failed to start"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)


def test_a_second_run_in_another_process_is_refused_naming_the_pid(ckpt_path: Path) -> None:
    child = spawn(HOLD_LOCK, str(ckpt_path))
    try:
        expected = (
            rf"another batchrun run of this job is running \(pid {child.pid}, started .+Z\): "
            rf"{re.escape(str(ckpt_path))}$"
        )
        with pytest.raises(LockedError, match=expected):
            Checkpoint.open(ckpt_path, job_name="job")
    finally:
        kill(child)


def test_a_child_process_is_refused_while_we_hold_the_lock(
    ckpt: Checkpoint, ckpt_path: Path
) -> None:
    script = CHILD_PRELUDE + "Checkpoint.open(path, job_name='job')"
    child = subprocess.run(
        [sys.executable, "-c", script, str(ckpt_path)], capture_output=True, text=True
    )
    assert child.returncode != 0
    assert (
        f"LockedError: another batchrun run of this job is running (pid {os.getpid()},"
        in child.stderr
    )


def test_a_second_open_in_the_same_process_is_refused(ckpt: Checkpoint, ckpt_path: Path) -> None:
    with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        Checkpoint.open(ckpt_path, job_name="job")


def test_the_lock_is_released_on_close(ckpt_path: Path) -> None:
    Checkpoint.open(ckpt_path, job_name="job").close()
    Checkpoint.open(ckpt_path, job_name="job").close()


def test_a_lock_left_by_a_killed_run_does_not_block(ckpt_path: Path) -> None:
    kill(spawn(HOLD_LOCK, str(ckpt_path)))
    assert Path(f"{ckpt_path}.lock").exists()
    Checkpoint.open(ckpt_path, job_name="job").close()


# ---------------------------------------------------------------- kill -9 integrity

WRITE_FOREVER = (
    CHILD_PRELUDE
    + """
import anyio
from datetime import datetime, UTC

def item(i):
    key = f"row-{i}"
    result = Result("ok", response=f"answer to {key} " * 50, model="m", prompt_tokens=i,
                    completion_tokens=1, total_tokens=i + 1, attempts=1, latency_ms=1.0,
                    completed_at=datetime.now(UTC))
    result.cost_usd = 0.001
    return Request(key, {}, f"v1:{key}", 1, 1), result

async def main():
    ckpt = Checkpoint.open(path, job_name="job")
    send, receive = anyio.create_memory_object_stream(1024)
    announced = []
    def on_commit(fps):
        if not announced:
            announced.append(1)
            print("ready", flush=True)
    async with anyio.create_task_group() as tg, send:
        tg.start_soon(ckpt.write_results, receive, on_commit)
        i = 0
        while True:
            await send.send(item(i))
            i += 1

anyio.run(main)
"""
)


@pytest.mark.parametrize("seed", range(3))
def test_after_kill_9_at_a_random_moment_every_committed_answer_is_intact(
    ckpt_path: Path, seed: int
) -> None:
    child = spawn(WRITE_FOREVER, str(ckpt_path))
    time.sleep(random.Random(seed).uniform(0.05, 0.8))
    kill(child)
    with Checkpoint.open(ckpt_path, job_name="job") as reopened:
        assert reopened.counts()["ok"] > 0
    db = sqlite3.connect(ckpt_path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute(
        "SELECT fingerprint, owner_key, response, prompt_tokens, total_tokens, completed_at, "
        "cost_usd FROM answers"
    ).fetchall()
    for fingerprint, key, response, prompt, total, completed_at, cost in rows:
        assert fingerprint == f"v1:{key}".encode()  # stored as bytes (store.fpkey)
        assert response == f"answer to {key} " * 50
        assert total == prompt + 1
        assert completed_at is not None and cost == 0.001
