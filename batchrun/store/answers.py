"""The answers table's layout since ``m006_compact_answers``, and how rows get into it.

Rows are appended in arrival order (a rowid table), indexed by ``key_prefix``, the
first 8 bytes of their key (``store.fpkey``) as a signed integer, instead of all 32. The
index is what a commit pays for: its keys are random, so each new row dirties an index
page of its own. An integer entry packs about twice as many a page as the 32-byte key
did, and compares faster (issue 14, a bare insert loop at 1M rows: 16 -> 8.5-10 µs of
SQLite CPU per row; the same 8 bytes as a BLOB expression index gave 14).

Two fingerprints may share a prefix, so every read compares the whole key, and the index
is not UNIQUE: the writer finds a key's earlier answer itself (``split_replaced``) and
replaces it by an UPDATE; a key without one is a plain INSERT.

``paid_usd`` is the answer's own known charges (``batchrun.store.charges``): the sum, over
every run, of its paid attempts whose usage came back and that are not rows of the
``charges`` table. NULL when there are none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import Any

Row = tuple[Any, ...]

_MAX_PARAMS = 900  # below SQLite's historical 999-variable limit
_ANSWER_COLUMNS = """
    fingerprint TEXT NOT NULL,
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
    completed_at INTEGER,  -- microseconds since the Unix epoch, UTC
    paid_usd REAL,  -- this answer's known charges not in the charges table
    key_prefix INTEGER NOT NULL  -- the indexed prefix of fingerprint (key_prefix())
"""


def key_prefix(key: bytes) -> int:
    """The index key of a stored key. Keys shorter than 8 bytes (none batchrun makes)
    may share one with another key, which every read tells apart."""
    return int.from_bytes(key[:8], "big", signed=True)


def m006_compact_answers(conn: sqlite3.Connection) -> None:
    """Rebuild answers without the 32-byte unique index (the only way SQLite drops a
    primary key). Costs and charges are copied as they are: ``paid_usd`` starts NULL,
    as every earlier charge is already a row of the charges table."""
    conn.create_function("key_prefix", 1, key_prefix, deterministic=True)
    conn.execute(f"CREATE TABLE answers_m006 ({_ANSWER_COLUMNS})")
    names = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(answers)"))
    conn.execute(
        f"INSERT INTO answers_m006 ({names}, key_prefix)"
        f" SELECT {names}, key_prefix(fingerprint) FROM answers ORDER BY rowid"
    )
    conn.execute("DROP TABLE answers")
    conn.execute("ALTER TABLE answers_m006 RENAME TO answers")
    conn.execute("CREATE INDEX answers_by_prefix ON answers (key_prefix)")


def is_compact(conn: sqlite3.Connection) -> bool:
    """Whether the file has this layout (a read-only view may look at an older one)."""
    return has_migration(conn, "m006_compact_answers")


def has_migration(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the file has had the migration ``name``."""
    has = conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,))
    return has.fetchone() is not None


def prefixes(keys: Iterable[bytes]) -> list[int]:
    """The distinct index keys of ``keys``."""
    return list({key_prefix(key) for key in keys})


def chunks(items: Sequence[Any], size: int = _MAX_PARAMS) -> Iterator[Sequence[Any]]:
    return (items[start : start + size] for start in range(0, len(items), size))


def where_keys(params: int, compact: bool) -> str:
    """``WHERE`` of a lookup by ``params`` keys (compact: by their prefixes; the caller
    drops rows whose whole key it did not ask for)."""
    column = "key_prefix" if compact else "fingerprint"
    return f"WHERE {column} IN ({', '.join('?' * params)})"


def key_params(keys: Sequence[bytes], compact: bool) -> Sequence[bytes | int]:
    return prefixes(keys) if compact else list(keys)


# ---------------------------------------------------------------- the writer's side


def split_replaced(conn: sqlite3.Connection, rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """``rows`` (key first) as (new answers, replacing ones, in order): a row replaces when
    its key has an answer stored or earlier in ``rows``."""
    keys = [row[0] for row in rows]
    stored: set[bytes] = set()
    for chunk in chunks(prefixes(keys)):
        sql = f"SELECT fingerprint FROM answers {where_keys(len(chunk), True)}"
        stored.update(key for (key,) in conn.execute(sql, chunk))
    new: list[Row] = []
    replacing: list[Row] = []
    for row in rows:
        if row[0] in stored:
            replacing.append(row)
        else:
            stored.add(row[0])
            new.append(row)
    return new, replacing


@cache
def insert_sql(columns: tuple[str, ...]) -> str:
    return f"INSERT INTO answers ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def insert_new(conn: sqlite3.Connection, columns: tuple[str, ...], rows: list[Row]) -> None:
    """Append answers whose keys have none yet, a row a statement: 64-row statements
    cost more (``bench/bench_checkpoint.py``'s ``bare-new`` at 1M rows: 12.6 µs a row
    with them, 11.2 without)."""
    conn.executemany(insert_sql(columns), rows)


_KNOWN_IN_TABLE = "SELECT SUM(cost_usd) FROM charges WHERE fingerprint = ? AND usage_known = 1"


def replace(conn: sqlite3.Connection, columns: tuple[str, ...], row: Row) -> None:
    """Store ``row`` over its key's answer. The cost becomes every known charge of the
    key (the charges table's, the old answer's, this one's); its own charges add up.
    Rare (a retried failure), so it is done row by row and in Python, for clarity."""
    values = dict(zip(columns, row, strict=True))
    key, new_paid = values["fingerprint"], values["paid_usd"]
    where = "WHERE key_prefix = ? AND fingerprint = ?"
    found = (key_prefix(key), key)
    (old_paid,) = conn.execute(f"SELECT paid_usd FROM answers {where}", found).fetchone()
    (in_table,) = conn.execute(_KNOWN_IN_TABLE, (key,)).fetchone()
    known = [v for v in (in_table, old_paid, new_paid) if v is not None]
    if known:
        values["cost_usd"] = sum(known)
    paid = [v for v in (old_paid, new_paid) if v is not None]
    values["paid_usd"] = sum(paid) if paid else None
    assignments = ", ".join(f"{c} = ?" for c in columns[1:])
    conn.execute(f"UPDATE answers SET {assignments} {where}", (*list(values.values())[1:], *found))
