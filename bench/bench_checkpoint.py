"""Checkpoint cost per row: writes through ``write_results`` and resume lookups.

    python bench/bench_checkpoint.py              # 1,000,000 rows
    python bench/bench_checkpoint.py --rows 100000

Each phase runs in its own subprocess so its peak RSS is its own. Phases:

- ``synth``: building the synthetic (Request, Result) items alone; the
  write figures include this producer cost, so it is shown for subtraction.
- ``write``: ``Checkpoint.open`` + ``write_results`` fed through an anyio memory
  stream, as the dispatcher feeds it; CPU counts the worker thread too.
- ``write-ahead``: ``write`` with write-ahead spend, as a run with a price writes: 64
  senders each hold an intent (committed in a group commit) before handing over the
  answer, whose charge settles it. Minus ``write``: the intents' cost per row.
- ``bare``: baseline, the same row tuples ``executemany``'d one per statement into
  the answers table as it was up to m005 (a unique index on the 32-byte key, the
  layout before the compact one), with the checkpoint's pragmas but its page
  cache, 4,096 rows per transaction, no stream, no thread.
- ``bare-new``: the same into today's layout (``m006_compact_answers``: the index
  on an 8-byte integer prefix), 64 rows a statement, with every pragma the checkpoint sets.
- ``lookup``: a resume that finds everything done: every fingerprint looked up
  in batches of 4096, Answers built.
- ``bare-lookup``: baseline, the same ``IN (...)`` queries, raw tuples only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from batchrun._errors import redactor
from batchrun._types import Charge, Request, Result
from batchrun.store.answers import insert_new, m006_compact_answers
from batchrun.store.checkpoint import COMMIT_ROWS, MIGRATIONS, Checkpoint
from batchrun.store.fpkey import fp_key
from batchrun.store.intents import IntentLog
from batchrun.store.origin import m008_synthetic_answers
from batchrun.store.rows import ROW_COLUMNS, to_row
from batchrun.store.schema import m009_reasks

LOOKUP_BATCH = 4096
BODY = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "..."}]}
START = datetime(2026, 11, 25, tzinfo=UTC)
Item = tuple[Request, Result]


def fingerprint(i: int) -> str:
    # Real fingerprints are sha256 digests: random order is what the B-tree sees.
    return "v1:" + hashlib.sha256(i.to_bytes(8, "little")).hexdigest()


def item(i: int) -> Item:
    result = Result(
        status="ok" if i % 50 else "error",
        response='{"label": "positive", "confidence": 0.93}',
        finish_reason="stop",
        model="gpt-5.5-2026-08-01",
        response_id=f"chatcmpl-{i:012d}",
        prompt_tokens=180 + i % 40,
        completion_tokens=12,
        total_tokens=192 + i % 40,
        cached_tokens=128,
        reasoning_tokens=0,
        attempts=1,
        latency_ms=412.5,
        completed_at=START + timedelta(microseconds=i * 1000),
        cost_usd=0.00036,
        charges=(Charge(0.00036, usage_known=True, at=1.0),),  # as the dispatcher hands it
    )
    request = Request(str(i), BODY, fingerprint(i), 200, 64)
    return request, result


def measure(fn: Callable[[], object]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


# ---------------------------------------------------------------- phases


def phase_synth(rows: int, db: Path) -> dict[str, float]:
    def run() -> None:
        for i in range(rows):
            item(i)

    return measure(run)


def phase_write(rows: int, db: Path) -> dict[str, float]:
    async def run() -> None:
        send, receive = anyio.create_memory_object_stream[Item](1024)
        with Checkpoint.open(db, job_name="bench", fresh=True) as ckpt:
            async with anyio.create_task_group() as tg, send:
                tg.start_soon(ckpt.write_results, receive)
                for i in range(rows):
                    try:  # as the dispatcher hands an answer over: no loop turn per item
                        send.send_nowait(item(i))
                    except anyio.WouldBlock:
                        await send.send(item(i))

    figures = measure(lambda: anyio.run(run))
    figures["db_mb"] = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 1e6
    return figures


SENDERS = 64


def phase_write_ahead(rows: int, db: Path) -> dict[str, float]:
    async def sender(first: int, intents: IntentLog, out: MemoryObjectSendStream[Item]) -> None:
        async with out:
            for i in range(first, rows, SENDERS):
                intent = await intents.hold(fingerprint(i), 0.00036, 1.0)
                request, result = item(i)
                result.charges = (Charge(0.00036, usage_known=True, at=1.0, intent=intent.id),)
                await out.send((request, result))

    async def run() -> None:
        send, receive = anyio.create_memory_object_stream[Item](1024)
        intents = IntentLog()
        with Checkpoint.open(db, job_name="bench", fresh=True) as ckpt:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ckpt.write_results, receive, None, intents)
                async with send, anyio.create_task_group() as senders:
                    for first in range(SENDERS):
                        senders.start_soon(sender, first, intents, send.clone())
            (left,) = ckpt._conn.execute("SELECT COUNT(*) FROM intents").fetchone()
            assert left == 0, f"{left} intents unsettled"

    figures = measure(lambda: anyio.run(run))
    figures["db_mb"] = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 1e6
    return figures


OLD_COLUMNS = ROW_COLUMNS[:-2]  # m001's table (+ m008's and m009's) has no paid_usd, key_prefix
OLD_INSERT_SQL = f"INSERT INTO answers VALUES ({', '.join('?' * len(OLD_COLUMNS))})"


def phase_bare(rows: int, db: Path) -> dict[str, float]:
    def run() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=8000")
        MIGRATIONS[0](conn)  # the answers table up to m005: its key is the primary key
        m008_synthetic_answers(conn)  # its columns added since, last in rows and table
        m009_reasks(conn)
        batch: list[tuple[object, ...]] = []
        redact = redactor()  # as the writer builds its rows
        for i in range(rows):
            batch.append(to_row(item(i), redact)[:-2])
            if len(batch) == COMMIT_ROWS or i == rows - 1:
                conn.execute("BEGIN")
                conn.executemany(OLD_INSERT_SQL, batch)
                conn.execute("COMMIT")
                batch = []
        conn.close()

    db.unlink(missing_ok=True)
    return measure(run)


def phase_bare_new(rows: int, db: Path) -> dict[str, float]:
    def run() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=8000"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("PRAGMA cache_size=-32768")
        MIGRATIONS[0](conn)
        m006_compact_answers(conn)  # today's answers table
        m008_synthetic_answers(conn)
        m009_reasks(conn)
        batch: list[tuple[object, ...]] = []
        redact = redactor()  # as the writer builds its rows
        for i in range(rows):
            batch.append(to_row(item(i), redact))
            if len(batch) == COMMIT_ROWS or i == rows - 1:
                conn.execute("BEGIN")
                insert_new(conn, ROW_COLUMNS, batch)
                conn.execute("COMMIT")
                batch = []
        conn.close()

    db.unlink(missing_ok=True)
    return measure(run)


def fingerprint_batches(rows: int) -> Iterator[list[str]]:
    for start in range(0, rows, LOOKUP_BATCH):
        yield [fingerprint(i) for i in range(start, min(rows, start + LOOKUP_BATCH))]


def phase_lookup(rows: int, db: Path) -> dict[str, float]:
    batches = list(fingerprint_batches(rows))  # made before timing: not lookup cost
    found = 0

    def run() -> None:
        nonlocal found
        with Checkpoint.open(db, job_name="bench") as ckpt:
            for batch in batches:
                found += len(ckpt.lookup(batch))

    figures = measure(run)
    assert found == rows, f"found {found} of {rows}"
    return figures


def phase_bare_lookup(rows: int, db: Path) -> dict[str, float]:
    # the stored keys (bytes, store.fpkey), converted before timing
    batches = [[fp_key(fp) for fp in batch] for batch in fingerprint_batches(rows)]
    conn = sqlite3.connect(db)
    sql = "SELECT * FROM answers WHERE fingerprint IN ({})"
    found = 0

    def run() -> None:
        nonlocal found
        for batch in batches:
            for start in range(0, len(batch), 900):
                chunk = batch[start : start + 900]
                found += len(conn.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall())

    figures = measure(run)
    assert found == rows, f"found {found} of {rows}"
    return figures


PHASES = {
    "synth": phase_synth,
    "write": phase_write,
    "write-ahead": phase_write_ahead,
    "bare": phase_bare,
    "bare-new": phase_bare_new,
    "lookup": phase_lookup,
    "bare-lookup": phase_bare_lookup,
}
DATABASE = {"write": "ckpt.sqlite", "lookup": "ckpt.sqlite", "bare": "bare.sqlite"}
DATABASE["bare-lookup"] = DATABASE["synth"] = "bare.sqlite"
DATABASE["bare-new"] = "bare-new.sqlite"
DATABASE["write-ahead"] = "ahead.sqlite"


# ---------------------------------------------------------------- driver


def run_phase(name: str, rows: int, workdir: Path) -> dict[str, float]:
    db = workdir / DATABASE[name]
    args = [sys.executable, __file__, "--phase", name, "--rows", str(rows), "--db", str(db)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def print_table(rows: int, results: dict[str, dict[str, float]]) -> None:
    print(
        f"\ncheckpoint benchmark, {rows:,} rows (Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version})\n"
    )
    print(
        f"| {'phase':<12} | {'wall s':>7} | {'CPU s':>7} | {'wall µs/row':>11} "
        f"| {'CPU µs/row':>10} | {'peak RSS MB':>11} |"
    )
    print(f"|{'-' * 14}|{'-' * 9}|{'-' * 9}|{'-' * 13}|{'-' * 12}|{'-' * 13}|")
    for name, f in results.items():
        print(
            f"| {name:<12} | {f['wall_s']:7.2f} | {f['cpu_s']:7.2f} | "
            f"{f['wall_s'] / rows * 1e6:11.2f} | {f['cpu_s'] / rows * 1e6:10.2f} | "
            f"{f['rss_mb']:11.0f} |"
        )
    synth = results["synth"]

    def minus_synth(name: str, unit: str) -> str:
        return f"{(results[name][unit] - synth[unit]) / rows * 1e6:.2f}"

    print(
        f"\nwrite minus synth: {minus_synth('write', 'wall_s')} µs/row wall, "
        f"{minus_synth('write', 'cpu_s')} µs/row CPU; "
        f"bare minus synth: {minus_synth('bare', 'cpu_s')} µs/row CPU (up to m005's layout), "
        f"bare-new minus synth: {minus_synth('bare-new', 'cpu_s')} µs/row CPU"
    )
    write = results["write"]
    print(f"checkpoint size: {write['db_mb']:.0f} MB ({write['db_mb'] * 1e6 / rows:.0f} bytes/row)")
    ahead = results["write-ahead"]
    wall, cpu = ((ahead[unit] - write[unit]) / rows * 1e6 for unit in ("wall_s", "cpu_s"))
    print(
        f"write-ahead minus write: {wall:.2f} µs/row wall, {cpu:.2f} µs/row CPU"
        " (each answer's attempt written ahead, then settled)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        figures = PHASES[args.phase](args.rows, args.db)
        figures["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(figures))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_phase(name, args.rows, Path(tmp)) for name in PHASES}
    print_table(args.rows, results)


if __name__ == "__main__":
    main()
