"""The checkpoint's schema: its migrations, in order, each recorded by name when applied.

A checkpoint records the migrations it has; one naming a migration this batchrun does
not know was written by a newer one and is refused, never read with a guessed schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from batchrun.store.answers import m006_compact_answers
from batchrun.store.batchdone import m005_done_batches
from batchrun.store.charges import m003_charges
from batchrun.store.fpkey import m004_binary_keys

__all__ = ["MIGRATIONS", "migrate", "now_iso", "transaction"]


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


@_migration
def m007_reasks(conn: sqlite3.Connection) -> None:
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
