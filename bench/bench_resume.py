"""Resume at scale: what a resume costs before it sends and before it exits, up to 10M rows.

    python bench/bench_resume.py                        # 1,000,000 rows
    python bench/bench_resume.py --rows 10000000 --live-rows 0 --write-rows 0

All on a generated Parquet input (``id``, a short review text), in ``--workdir`` (default
a temporary directory; delete it afterwards: 10M rows take about 6 GB).

- (a) checkpoint write cost per row: ``live`` is a real run (``run_job_file`` in this
  process) of ``--live-rows`` rows against the emulator at zero latency, with the
  writer's ``to_row`` and ``_insert`` timed from inside; ``write_results`` stores
  ``--write-rows`` answers into a checkpoint of their own.
- set-up: the state a finished run leaves, built in bulk, NOT by a run (a run of 10M
  rows, or 10M answers through ``write_results``, would take most of an hour here):
  ``write_output`` walks the input as a run's output pass does, with a stand-in lookup
  that answers every row; the builder's rows are appended, in the checkpoint module's own row
  format (``to_row``, ``charge_rows``), to an unindexed side database, then copied
  into the real checkpoint (``Checkpoint.open``: real schema and migrations) in key
  order; every input batch is recorded as done and the output's footer names them
  (``batchrun.written_from``), as a finished run leaves them.
- (c) ``batchrun run`` finding every row done: time to exit, CPU, peak RSS.
- (k) after a kill -9: the answers of the last 1,000 rows and every done-batch record
  dropped (no output pass ran). A resume runs to its first request and is killed -9
  there; the next resume runs to its first request and on to its exit (``--quick``:
  is killed there too; its output pass costs as much as (b)'s).
- (b) the answers of the last 1,000 rows and their batch's record dropped (a stopped
  run): a resume to its first request and to its exit (1,000 sent, output written).

Each resume is ``batchrun run`` under ``/usr/bin/time`` (CPU, peak RSS); the first
request is when the emulator's ledger first counts one. Baselines in the same run:
reading the input with pyarrow, and starting python with batchrun imported.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq

from batchrun._runner import RunOptions, run_job_file
from batchrun._types import Answer, Charge, Keyed, Request, Result
from batchrun.emulator import EmulatorProcess
from batchrun.engines.base import prepare
from batchrun.engines.local import BATCH_ROWS, _DoneBatches
from batchrun.job.load import load_job
from batchrun.output.table import write_output
from batchrun.store import checkpoint as _checkpoint
from batchrun.store import rows as _rows
from batchrun.store.answers import key_prefix
from batchrun.store.batchdone import WRITTEN_FROM_KEY, batch_digest, output_state, request_key
from batchrun.store.charges import charge_rows
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.fpkey import fp_key

KEY = "sk-bench"
LEFT_TO_DO = 1000
JOB = """\
[job]
name = "bench-resume"
[api]
base_url = "{base_url}"
[input]
path = "{input}"
id_column = "id"
[request]
model = "gpt-5.5"
prompt = "Label this review: {{text}}"
max_completion_tokens = 16
[limits]
concurrency = 64
[output]
path = "{output}"
[pricing."gpt-5.5"]
input = 1.25
cached_input = 0.125
output = 10.0
"""
Figures = dict[str, float]


# --- inputs and jobs --------------------------------------------------------------------


def make_input(path: Path, rows: int) -> None:
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return  # this bench's input, from an earlier run in the same --workdir
    moods = ("great value", "arrived broken", "fine, nothing special", "slow delivery")
    chunk = 100_000
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("text", pa.string())])) as out:
        for start in range(0, rows, chunk):
            ids = range(start, min(start + chunk, rows))
            out.write_table(
                pa.table(
                    {
                        "id": [f"r{i:08d}" for i in ids],
                        "text": [f"Review {i}: {moods[i % 4]}." for i in ids],
                    }
                )
            )


def write_job(workdir: Path, name: str, source: Path, base_url: str) -> Path:
    """The job, with the emulator's URL in the file: a ``--set`` would change the config
    hash, which the state built here must share with the runs."""
    job = workdir / f"{name}.toml"
    output = workdir / f"{name}.out.parquet"
    job.write_text(JOB.format(input=source, output=output, base_url=base_url))
    return job


def run_command(job: Path) -> list[str]:
    return [sys.executable, "-m", "batchrun", "run", str(job), "--quiet"]


def env() -> dict[str, str]:
    return {**os.environ, "MODELSTREAM_API_KEY": KEY}


# --- measuring ----------------------------------------------------------------------------


def timed_child(command: list[str], workdir: Path) -> Figures:
    """Wall time and peak RSS of ``command``, by ``/usr/bin/time``."""
    report = workdir / "time.txt"
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *command],
        env=env(),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited {done.returncode}: {done.stderr[-2000:]}")
    return {"wall_s": wall, "rss_mb": int(report.read_text().split()[-1]) / 1024}


def baseline_read(source: Path, workdir: Path) -> Figures:
    code = (
        "import sys, pyarrow.parquet as pq\n"
        "sum(b.num_rows for b in pq.ParquetFile(sys.argv[1]).iter_batches(batch_size=4096))"
    )
    return timed_child([sys.executable, "-c", code, str(source)], workdir)


def baseline_import(workdir: Path) -> Figures:
    code = "import batchrun.cli, batchrun._runner"
    return timed_child([sys.executable, "-c", code], workdir)


class _Stopwatch:
    """Accumulates the time spent in one function, wherever it is called from."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


def live_run(source: Path, workdir: Path, rows: int) -> Figures:
    """(a) A real run, with the checkpoint writer's two steps timed from inside."""
    to_row, insert = _Stopwatch(), _Stopwatch()
    original_to_row, original_insert = _checkpoint.to_row, Checkpoint._insert
    _checkpoint.to_row = to_row.wrap(original_to_row)
    Checkpoint._insert = insert.wrap(original_insert)  # type: ignore[method-assign]
    try:
        with EmulatorProcess([], quiet=True) as emu:
            job = write_job(workdir, "live", source, emu.base_url)
            started = time.perf_counter()
            summary = run_job_file(job, options=RunOptions(api_key=KEY))
            wall = time.perf_counter() - started
    finally:
        _checkpoint.to_row, Checkpoint._insert = original_to_row, original_insert
    assert summary.by_status == {"ok": rows}, summary.by_status
    writer = to_row.seconds + insert.seconds
    return {
        "wall_s": wall,
        "rows_per_s": rows / wall,
        "to_row_us": to_row.seconds / rows * 1e6,
        "insert_us": insert.seconds / rows * 1e6,
        "writer_us": writer / rows * 1e6,
        "writer_share": writer / wall,
        "commits": insert.calls,
    }


def _result(now: datetime) -> Result:
    return Result(
        status="ok",
        response="positive",
        finish_reason="stop",
        model="gpt-5.5",
        response_id="chatcmpl-bench",
        prompt_tokens=18,
        completion_tokens=4,
        total_tokens=22,
        cached_tokens=0,
        reasoning_tokens=0,
        attempts=1,
        latency_ms=120.0,
        completed_at=now,
        cost_usd=0.0001,
        charges=(Charge(0.0001, usage_known=True, at=now.timestamp()),),
    )


def _requests(job_path: Path, rows: int, from_row: int = 0) -> Iterator[Request]:
    """The requests of rows ``from_row`` up to ``rows``, as a run builds them."""
    table, builder = prepare(load_job(job_path))
    start = 0
    for batch in table.batches():
        if start + batch.num_rows > from_row:
            for item in builder.build(batch, start):
                if isinstance(item, Request) and from_row <= int(item.key[1:]) < rows:
                    yield item
        start += batch.num_rows
        if start >= rows:
            return


def write_cost(source: Path, workdir: Path, rows: int) -> Figures:
    """(a, at size) Store ``rows`` answers through ``write_results`` into a new checkpoint."""
    job = load_job(write_job(workdir, "write", source, "http://127.0.0.1:9"))
    now = datetime.now(UTC)
    items = [(request, _result(now)) for request in _requests(workdir / "write.toml", rows)]

    async def write() -> None:
        send, receive = anyio.create_memory_object_stream[tuple[Request, Result]](1024)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ckpt.write_results, receive)
            async with send:
                for item in items:
                    await send.send(item)

    with Checkpoint.open(job.output.checkpoint_path, job_name=job.name, fresh=True) as ckpt:
        started = time.perf_counter()
        anyio.run(write)
        wall = time.perf_counter() - started
    return {"wall_s": wall, "write_us": wall / len(items) * 1e6, "answers": len(items)}


# --- the state of a finished run, built in bulk ---------------------------------------


class _Staging:
    """Answer and charge rows in the checkpoint module's own row format, appended to an
    unindexed side database (cheap), to be copied into the checkpoint in input order."""

    def __init__(self, path: Path, now: datetime) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        columns = ", ".join(_rows.ROW_COLUMNS)
        self.conn.execute(f"CREATE TABLE answers ({columns})")
        self.conn.execute("CREATE TABLE charges (fingerprint, cost_usd, usage_known, at)")
        self.result = _result(now)
        self.marks = ", ".join("?" * len(_rows.ROW_COLUMNS))

        self.owners: dict[str, str] = {}

    def lookup(self, fingerprints: Sequence[str]) -> dict[str, Answer]:
        """Every row answered: the stand-in lookup of the output pass."""
        return {fp: Answer(self.owners[fp], self.result) for fp in fingerprints}

    def add(self, items: Sequence[Keyed | Request | Result]) -> None:
        """Store the answers of a batch's rows (``RequestBuilder.keyed`` calls this)."""
        pairs = [(item, self.result) for item in items if not isinstance(item, Result)]
        self.owners = {request.fingerprint: request.key for request, _ in pairs}
        self.conn.execute("BEGIN")
        self.conn.executemany(
            f"INSERT INTO answers VALUES ({self.marks})",
            (_checkpoint.to_row(pair, str) for pair in pairs),
        )
        self.conn.executemany(
            "INSERT INTO charges VALUES (?, ?, ?, ?)",
            (row for pair in pairs for row in charge_rows(*pair)),
        )
        self.conn.execute("COMMIT")


def build_state(job_path: Path, workdir: Path) -> Figures:
    """A finished run's state without running it: every row's answer and charge in the
    real checkpoint (opened with ``Checkpoint.open``: real schema and migrations),
    every input batch recorded as done, and the output written by ``write_output``
    from the input with those answers, its footer naming the done batches
    (``batchrun.written_from``) as a finished run's does. The answers are copied in
    input order, the order a run stores them in (it stores them as they arrive, which is
    input order give or take the requests in flight), and the key index is built once
    after them (faster than a million random inserts)."""
    started = time.perf_counter()
    job = load_job(job_path)
    staging_path = workdir / "staging.sqlite"
    staging_path.unlink(missing_ok=True)
    staging = _Staging(staging_path, datetime.now(UTC))
    done = _DoneBatches(request_key(job))

    def footer() -> dict[str, str]:
        digests = [batch.digest for batch in done.found]
        return {WRITTEN_FROM_KEY: output_state(job, digests, synthetic=False, commits=0)}

    table, builder = prepare(job)
    keyed = builder.keyed  # the output pass's walk

    def key_and_store(*args: Any) -> list[Keyed | Request | Result]:
        items = keyed(*args)
        staging.add(items)
        return items

    builder.keyed = key_and_store  # type: ignore[method-assign]
    metadata = {"batchrun.job": job.name}
    write_output(job, table, builder, staging.lookup, metadata, on_batch=done, footer=footer)
    staging.conn.close()
    with Checkpoint.open(job.output.checkpoint_path, job_name=job.name, fresh=True) as ckpt:
        _bulk_copy(ckpt._conn, staging_path)
        ckpt.record_done_batches(done.found)
    staging_path.unlink()
    return {"wall_s": time.perf_counter() - started, "batches": len(done.found)}


def _bulk_copy(conn: sqlite3.Connection, staging: Path) -> None:
    conn.execute("PRAGMA journal_mode=DELETE")  # a load from scratch needs no WAL
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("ATTACH DATABASE ? AS staging", (str(staging),))
    columns = ", ".join(_rows.ROW_COLUMNS)
    conn.execute("BEGIN")
    conn.execute("DROP INDEX answers_by_prefix")  # m006's, made again below
    conn.execute(f"INSERT INTO answers ({columns}) SELECT * FROM staging.answers ORDER BY rowid")
    conn.execute("CREATE INDEX answers_by_prefix ON answers (key_prefix)")
    conn.execute(
        "INSERT INTO charges (fingerprint, cost_usd, usage_known, at)"
        " SELECT * FROM staging.charges ORDER BY fingerprint"
    )
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE staging")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA journal_mode=WAL")  # as every run opens it


def forget(job_path: Path, rows: int, *, done_batches: str) -> None:
    """Drop the answers (and charges) of the last ``LEFT_TO_DO`` rows, as if never
    received, and ``done_batches`` done-batch records: ``"all"`` (a kill -9 before any
    output pass) or ``"last"`` (the batches those rows are in)."""
    job = load_job(job_path)
    last = list(_requests(job_path, rows, from_row=rows - LEFT_TO_DO))
    keys = [fp_key(r.fingerprint) for r in last]
    with Checkpoint.open(job.output.checkpoint_path, job_name=job.name) as ckpt:
        conn = ckpt._conn
        conn.execute("BEGIN")
        conn.executemany(  # by the indexed prefix: answers has no index on the whole key
            "DELETE FROM answers WHERE key_prefix = ? AND fingerprint = ?",
            [(key_prefix(key), key) for key in keys],
        )
        conn.executemany("DELETE FROM charges WHERE fingerprint = ?", [(k,) for k in keys])
        if done_batches == "all":
            conn.execute("DELETE FROM done_batches")
        else:
            for digest in _batch_digests(job_path, first_row=rows - LEFT_TO_DO):
                conn.execute("DELETE FROM done_batches WHERE digest = ?", (digest,))
        conn.execute("COMMIT")


def _batch_digests(job_path: Path, first_row: int) -> Iterator[bytes]:
    """The digests of the input batches holding rows from ``first_row`` on."""
    job = load_job(job_path)
    table, _ = prepare(job)
    key, start = request_key(job), 0
    for batch in table.batches(BATCH_ROWS):
        if start + batch.num_rows > first_row:
            yield batch_digest(batch, start, key)
        start += batch.num_rows


# --- the resumes --------------------------------------------------------------------------


def resume(job: Path, emu: EmulatorProcess, workdir: Path, *, kill: bool = False) -> Figures:
    """``batchrun run`` under ``/usr/bin/time``: the time to the emulator's first request,
    then (``kill``) a kill -9 right there, or its exit, its CPU and peak RSS."""
    report, errors = workdir / "time.txt", workdir / "stderr.txt"
    before = _settled(emu)
    started = time.perf_counter()
    with errors.open("wb") as stderr:
        run = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", str(report), *run_command(job)],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    first = first_cpu = math.nan
    while run.poll() is None:
        if emu.ledger()["requests_received"] > before:
            first = time.perf_counter() - started
            first_cpu = _cpu_s(_child_of(run.pid))  # on a busy machine, wall time says little
            break
        time.sleep(0.01)
    if kill:
        os.kill(_child_of(run.pid), signal.SIGKILL)
    run.wait()
    total = time.perf_counter() - started
    if not kill and run.returncode != 0:
        raise RuntimeError(f"the resume exited {run.returncode}: {errors.read_text()[-2000:]}")
    sent = _settled(emu) - before
    figures = {"first_request_s": first, "first_request_cpu_s": first_cpu}
    figures |= {"total_s": total, "sent": sent}
    if not kill:
        rss, user, system = report.read_text().split()[-3:]
        figures |= {"rss_mb": int(rss) / 1024, "cpu_s": float(user) + float(system)}
    return figures


def _settled(emu: EmulatorProcess) -> int:
    """The ledger's request count once requests a killed run left on the wire are in."""
    count = emu.ledger()["requests_received"]
    while True:
        time.sleep(0.5)
        if (now := emu.ledger()["requests_received"]) == count:
            return int(now)
        count = now


def _cpu_s(pid: int) -> float:
    """User plus system CPU time of a live process, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0])


# --- the report --------------------------------------------------------------------------


def print_table(rows: int, f: dict[str, Figures]) -> None:
    done, n = rows - LEFT_TO_DO, f"{rows:,}"
    lines: list[tuple[str, str, float | None]] = [
        ("baseline: read the input with pyarrow", _s(f["read"]["wall_s"]), f["read"]["rss_mb"]),
        ("baseline: start python, import batchrun", _s(f["import"]["wall_s"]), None),
    ]
    if "live" in f:
        a = f["live"]
        lines += [
            ("(a) live run, 0 ms: rows per second", f"{a['rows_per_s']:.0f}", None),
            ("    writer per row (to_row + _insert)", f"{a['writer_us']:.1f} us", None),
            ("    writer share of the run's wall time", f"{a['writer_share']:.1%}", None),
        ]
    if "write" in f:
        w = f["write"]
        lines.append((f"(a) write_results of {w['answers']:,.0f}, per row", _us(w), None))
    lines.append(("set-up: state of a finished run (bulk)", _s(f["state"]["wall_s"]), None))
    lines += _resume_lines(f"(c) all {n} done: exit", f["done"], first=False)
    if "kill" in f:
        lines += _resume_lines(f"(k) after kill -9, {done:,} answered: 1st request", f["kill"])
        lines += _resume_lines("(k) the next resume: 1st request", f["kill2"])
    lines += _resume_lines(f"(b) {done:,} of {n} done: 1st request", f["resume"])
    width = max(len(name) for name, _, _ in lines)
    print(f"\nbench_resume: {n} rows, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"  {'':<{width}}  {'figure':>10}  {'peak RSS':>9}")
    for name, value, rss in lines:
        peak = "" if rss is None else f"{rss:.0f} MB"
        print(f"  {name:<{width}}  {value:>10}  {peak:>9}")


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _us(w: Figures) -> str:
    return f"{w['write_us']:.1f} us"


def _resume_lines(name: str, r: Figures, *, first: bool = True) -> list[tuple[str, str, Any]]:
    lines: list[tuple[str, str, Any]] = []
    if first:
        lines.append((name, _s(r["first_request_s"]), None))
        lines.append(("    CPU until then", _s(r["first_request_cpu_s"]), None))
        name = f"    to exit ({r['sent']:.0f} sent)"
    if "cpu_s" in r:
        lines.append((name, _s(r["total_s"]), r["rss_mb"]))
        lines.append(("    CPU", _s(r["cpu_s"]), None))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--live-rows", type=int, default=20_000, help="0: no live run")
    parser.add_argument("--write-rows", type=int, default=200_000, help="0: no write_results")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 resumes")
    quick = "kill the second resume after a kill -9 at its first request too (no output pass)"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_resume_"))
    workdir.mkdir(parents=True, exist_ok=True)
    figures = measure(args, workdir)
    print_table(args.rows, figures)


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Figures]:
    source = workdir / "input.parquet"
    _say(f"writing {args.rows:,} input rows")
    make_input(source, args.rows)
    figures = {"read": baseline_read(source, workdir), "import": baseline_import(workdir)}
    if args.live_rows:
        _say("live run")
        make_input(workdir / "live.parquet", args.live_rows)
        figures["live"] = live_run(workdir / "live.parquet", workdir, args.live_rows)
    if args.write_rows:
        _say("write_results")
        figures["write"] = write_cost(source, workdir, min(args.write_rows, args.rows))
    with EmulatorProcess([], quiet=True) as emu:
        job = write_job(workdir, "resume", source, emu.base_url)
        _say("building the state of a finished run")
        figures["state"] = build_state(job, workdir)
        _say("(c) every row done")
        figures["done"] = resume(job, emu, workdir)
        assert figures["done"]["sent"] == 0, "the all-done run sent requests"
        if not args.no_kill:
            _say("(k) after a kill -9")
            forget(job, args.rows, done_batches="all")
            figures["kill"] = resume(job, emu, workdir, kill=True)
            figures["kill2"] = resume(job, emu, workdir, kill=args.quick)
        _say("(b) the last rows to do")
        forget(job, args.rows, done_batches="last")
        figures["resume"] = resume(job, emu, workdir)
        assert figures["resume"]["sent"] == LEFT_TO_DO, figures["resume"]
    return figures


def _say(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what} ...", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
