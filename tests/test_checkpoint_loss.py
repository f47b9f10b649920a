"""A checkpoint that lost its answers is refused before anything is sent again, and a
job whose output or checkpoint would be read back as its own input is refused."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import run_batchrun, start_batchrun, wait_for_requests, write_job

from batchrun._errors import JobError
from batchrun._types import Request, Result
from batchrun.job.paths import inside_input
from batchrun.store.checkpoint import Checkpoint

CKPT = "out.parquet.ckpt.sqlite"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def one_line(done: Any) -> str:
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def test_an_empty_checkpoint_beside_the_jobs_output_is_refused(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=20)
    assert run_batchrun(job, emu, "--quiet").returncode == 0
    (tmp_path / CKPT).write_bytes(b"")  # emptied (a failed copy, a full disk)
    emu.reset()
    line = one_line(run_batchrun(job, emu))
    assert f"checkpoint {CKPT} is empty, but this job has written its output" in line
    assert "--fresh" in line and emu.ledger()["requests_received"] == 0
    assert run_batchrun(job, emu, "--fresh", "--quiet").returncode == 0
    assert emu.ledger()["requests_received"] == 20


def test_an_empty_checkpoint_without_an_output_is_a_new_one(tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=5)
    (tmp_path / CKPT).write_bytes(b"")
    assert run_batchrun(job, emu, "--quiet").returncode == 0


def test_a_checkpoint_without_the_wal_holding_its_answers_is_refused(
    tmp_path: Path, emulators: Any
) -> None:
    emu = emulators.get("--latency-ms", "100")
    job = write_job(tmp_path, rows=200, limits={"concurrency": 4})
    proc = start_batchrun(job, emu)
    wait_for_requests(emu, 40)
    time.sleep(1.0)  # a few commits (every 0.5 s), all in the -wal still
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wal = tmp_path / f"{CKPT}-wal"
    assert wal.stat().st_size > 0
    kept = wal.read_bytes()
    wal.unlink()
    (tmp_path / f"{CKPT}-shm").unlink(missing_ok=True)
    sent = emu.ledger()["requests_received"]
    line = one_line(run_batchrun(job, emu))
    assert f"{CKPT}-wal file is missing, and held answers" in line and "--fresh" in line
    assert emu.ledger()["requests_received"] == sent
    wal.write_bytes(kept)  # put back: the run resumes, paying only for what is missing
    assert run_batchrun(job, emu, "--quiet").returncode == 0
    assert emu.ledger()["requests_received"] < sent + 200 - 20


def test_a_cleanly_closed_checkpoint_needs_no_wal(tmp_path: Path, emulator: Any) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=10)
    assert run_batchrun(job, emu, "--quiet").returncode == 0
    assert not (tmp_path / f"{CKPT}-wal").exists()
    assert run_batchrun(job, emu, "--quiet", "--retry-failed").returncode == 0
    assert emu.ledger()["requests_received"] == 10


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["input.path=data", "output.path=data/out.parquet"], "output.path"),
        (["input.path=data/*.csv", "output.checkpoint=data/c.csv"], "output.checkpoint"),
        (["input.path=data/**", "output.path=data/d/out.parquet"], "output.path"),
        (["input.path=data", "output.checkpoint=data/sub/c.sqlite"], "output.checkpoint"),
    ],
)
def test_an_output_inside_the_input_is_refused(
    tmp_path: Path, emulator: Any, sets: list[str], key: str
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=3)
    (tmp_path / "data").mkdir()
    (tmp_path / "input.csv").rename(tmp_path / "data" / "in.csv")
    line = one_line(run_batchrun(job, emu, *(f"--set={s}" for s in sets)))
    assert f"{key}: " in line and "is inside input.path" in line
    assert emu.ledger()["requests_received"] == 0


def test_an_output_beside_the_input_directory_or_hidden_in_it_is_fine(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=3)
    (tmp_path / "data").mkdir()
    (tmp_path / "input.csv").rename(tmp_path / "data" / "in.csv")
    for out in ("data-out/out.parquet", "data/_out/out.parquet"):
        done = run_batchrun(job, emu, "--set=input.path=data", f"--set=output.path={out}")
        assert done.returncode == 0, done.stderr
    again = run_batchrun(
        job, emu, "--set=input.path=data", "--set=output.path=data/_out/out.parquet"
    )
    assert again.returncode == 0, again.stderr


# --- the mark, in process: folds by anyone, and the writer marking again after one -----


def _answers(keys: range) -> list[tuple[Request, Result]]:
    return [
        (Request(f"r{i}", {"messages": []}, f"v1:r{i}", 10, 5), Result("ok", response="yes"))
        for i in keys
    ]


async def _write(ckpt: Checkpoint, items: list[tuple[Request, Result]]) -> None:
    send, receive = anyio.create_memory_object_stream[tuple[Request, Result]](len(items))
    async with anyio.create_task_group() as tg:
        tg.start_soon(ckpt.write_results, receive, None)
        async with send:
            for item in items:
                await send.send(item)


def _fold(path: Path) -> None:
    """What any SQLite client does on close, or SQLite itself every 32 MB."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _lose_wal(path: Path, to: Path) -> Path:
    """The main file alone, as a copy without its -wal is."""
    to.mkdir()
    shutil.copyfile(path, to / path.name)
    return to / path.name


@pytest.mark.anyio
async def test_a_fold_by_anyone_keeps_the_file_whole_and_the_writer_marks_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.sqlite"
    with Checkpoint.open(path, job_name="j") as ckpt:
        await _write(ckpt, _answers(range(10)))
        _fold(path)  # the answers are in the main file now: nothing is lost without the -wal
        Checkpoint.open(_lose_wal(path, tmp_path / "a"), job_name="j").close()
        await _write(ckpt, _answers(range(10, 20)))  # after the fold: marked again
        lost = _lose_wal(path, tmp_path / "b")
        with pytest.raises(JobError, match=r"c\.sqlite-wal file is missing, and held answers"):
            Checkpoint.open(lost, job_name="j")
    _fold(path)  # an outside client after the run, as `sqlite3 ckpt "select ..."` is
    Checkpoint.open(path, job_name="j").close()


@pytest.mark.parametrize(
    ("written", "spec", "inside"),
    [
        ("data/out.parquet", "data", True),
        ("data/sub/out.parquet", "data/", True),
        ("data/_out.parquet", "data", False),  # discovery skips _ and . names
        ("data/.out/o.parquet", "data", False),
        ("data-out/out.parquet", "data", False),
        ("data/o.parquet", "data/*.parquet", True),
        ("data/sub/o.parquet", "data/*.parquet", False),  # * stays in one directory
        ("data/sub/o.parquet", "data/**/*.parquet", True),
        ("data/o.parquet", "data/**/*.parquet", True),
        ("data/o.parquet", "data/*.csv", False),
        ("data/.o.parquet", "data/*", False),  # * skips hidden names
        ("s3://b/in/o.parquet", "s3://b/in/", True),
        ("s3://b/inx/o.parquet", "s3://b/in", False),
        ("s3://b/in/o.parquet", "s3://b/in/*.parquet", True),
        ("s3://b/in/o.parquet", "in", False),
    ],
)
def test_inside_input_follows_how_input_files_are_found(
    written: str, spec: str, inside: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert inside_input(written, spec) is inside
