"""The checkpoint's schema: its migrations, in order, each recorded by name when applied.

A checkpoint records the migrations it has; one naming a migration this batchrun does
not know was written by a newer one and is refused, never read with a guessed schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from batchrun._errors import JobError
from batchrun.store.answers import m006_compact_answers
from batchrun.store.batchdone import m005_done_batches
from batchrun.store.charges import m003_charges
from batchrun.store.fpkey import m004_binary_keys
from batchrun.store.intents import m007_intents
from batchrun.store.origin import m008_synthetic_answers

__all__ = [
    "MIGRATIONS",
    "PAGE_SIZE",
    "claim_for_job",
    "connect",
    "foreign_job",
    "migrate",
    "now_iso",
    "remove_database",
    "transaction",
]


PAGE_SIZE = 16384
"""A new checkpoint's page size (SQLite's default: 4096; an existing file keeps its own).
A commit writes every index page its random keys touched, each a WAL frame of its own:
bigger pages mean fewer of them. At 1M rows (``bench/bench_checkpoint.py``, write minus
synth) 4 KB pages cost 15.5 µs a row, 8 KB 14.3, 16 KB 13.5; in a live run the writer's
share fell from 34.7 to 25.8 µs a row (``bench/bench_resume.py``). Reads pay: each copies
a whole page. ``answered`` over 1M keys in random order costs 6.1, 7.2 and 7.6 µs a key;
at 1M rows stored as a run stores them, the output pass of a resume with 1,000 rows to
send takes 17.5 s instead of 15.7, and the check after a kill -9 7.1 s instead of 5.7."""

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []
"""Schema changes in the order they apply; each is recorded by name in ``_migrations``."""


def _migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@_migration
def m001_answers(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE answers (
            fingerprint TEXT PRIMARY KEY,
            owner_key TEXT NOT NULL,
            status TEXT NOT NULL,
            response TEXT,
            reasoning_content TEXT,
            tool_calls TEXT,
            finish_reason TEXT,
            model TEXT,
            response_id TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            total_tokens INTEGER,
            cached_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost_usd REAL,
            error_type TEXT,
            error_message TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            latency_ms REAL,
            completed_at INTEGER  -- microseconds since the Unix epoch, UTC
        )
        """
    )


@_migration
def m002_meta(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


_migration(m003_charges)
_migration(m004_binary_keys)
_migration(m005_done_batches)
_migration(m006_compact_answers)
_migration(m007_intents)
_migration(m008_synthetic_answers)


@_migration
def m009_reasks(conn: sqlite3.Connection) -> None:
    """How many follow-up turns an answer took (``request.reask``), and whether it was
    sent again after a cut-off (``request.cut_off_retry_tokens``)."""
    conn.execute("ALTER TABLE answers ADD COLUMN reasks INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE answers ADD COLUMN cut_off_retried INTEGER NOT NULL DEFAULT 0")


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    applied = {name for (name,) in conn.execute("SELECT name FROM _migrations")}
    unknown = applied - {fn.__name__ for fn in MIGRATIONS}
    if unknown:
        # Written by a newer batchrun: guessing at its schema could lose answers.
        raise sqlite3.DatabaseError(f"unknown schema migrations {sorted(unknown)}")
    for fn in MIGRATIONS:
        if fn.__name__ not in applied:
            with transaction(conn):
                fn(conn)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (fn.__name__, now_iso()))


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # The connection is in autocommit mode so that transactions are explicit here.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def claim_for_job(conn: sqlite3.Connection, path: Path, job_name: str) -> None:
    """Record the job on a new checkpoint; refuse one that belongs to another job."""
    with transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO meta VALUES (?, ?)",
            [("job_name", job_name), ("created_at", now_iso())],
        )
        (owner,) = conn.execute("SELECT value FROM meta WHERE key = 'job_name'").fetchone()
    if owner != job_name:
        # Its spend would count against this job's budget, so sharing is refused.
        raise foreign_job(path, owner, job_name)


def foreign_job(path: Path, owner: str, job_name: str) -> JobError:
    return JobError(
        f"checkpoint {path} belongs to job {owner!r}, not {job_name!r}: "
        "set output.checkpoint to another file, or rerun with --fresh to start over"
    )


def connect(path: Path) -> sqlite3.Connection:
    """The checkpoint's connection: its pragmas set, its migrations applied."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file only: see PAGE_SIZE
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable against process death; see docstring
        # Answers land on random B-tree pages; checkpointing the WAL back into the
        # database every 32 MB instead of every 4 MB copies each hot page less often
        # (about a third off the write cost at 1M rows).
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        conn.execute(f"PRAGMA wal_autocheckpoint={(32 << 20) // page_size}")
        # 32 MB of page cache (default 2 MB): B-tree pages are not read back on each commit.
        conn.execute("PRAGMA cache_size=-32768")
        # Only we write (the run lock sees to that), but an outside reader may hold it briefly.
        conn.execute("PRAGMA busy_timeout=5000")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
