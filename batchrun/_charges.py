"""The checkpoint's record of charges: every attempt that may have been billed, appended.

Answers are replaced when a failed row is retried; charges never are. So the spend a
later budget counts (``SPEND_SQL``) and a row's ``cost_usd`` (the charges of its
request whose usage came back, over every run) survive ``--retry-failed``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from batchrun._fpkey import fp_key
from batchrun._types import Request, Result

ChargeRow = tuple[bytes, float, int, int]

INSERT_CHARGES_SQL = (
    "INSERT INTO charges (fingerprint, cost_usd, usage_known, at) VALUES (?, ?, ?, ?)"
)
SPEND_SQL = "SELECT TOTAL(cost_usd) FROM charges"
OLD_SPEND_SQL = "SELECT TOTAL(cost_usd) FROM answers"  # a checkpoint not yet migrated
# A retried request's answer replaces the old one, but its cost is every known charge.
ROW_COST_ON_REPLACE = (
    "cost_usd = COALESCE((SELECT SUM(c.cost_usd) FROM charges AS c"
    " WHERE c.fingerprint = excluded.fingerprint AND c.usage_known = 1), excluded.cost_usd)"
)


def m003_charges(conn: sqlite3.Connection) -> None:
    """Create the record; an existing answer's cost becomes its one (known) charge."""
    conn.execute(
        """
        CREATE TABLE charges (
            fingerprint TEXT NOT NULL,
            cost_usd REAL NOT NULL,
            usage_known INTEGER NOT NULL,  -- 0: no usage came back, cost is the worst case
            at INTEGER  -- microseconds since the Unix epoch, UTC
        )
        """
    )
    conn.execute("CREATE INDEX charges_by_fingerprint ON charges (fingerprint)")
    conn.execute(
        "INSERT INTO charges SELECT fingerprint, cost_usd, 1, completed_at FROM answers"
        " WHERE cost_usd IS NOT NULL"
    )


def charge_rows(request: Request, result: Result) -> Iterator[ChargeRow]:
    key = fp_key(request.fingerprint)
    for charge in result.charges:
        yield key, charge.cost_usd, int(charge.usage_known), int(charge.at * 1e6)


# Answers stored while the model had no price: usage known, nothing charged for it.
_UNPRICED = (
    "SELECT TOTAL(prompt_tokens), TOTAL(COALESCE(cached_tokens, 0)),"
    " TOTAL(COALESCE(completion_tokens, 0)) FROM answers AS a"
    " WHERE a.cost_usd IS NULL AND a.prompt_tokens IS NOT NULL"
)
_UNCHARGED = " AND NOT EXISTS (SELECT 1 FROM charges AS c WHERE c.fingerprint = a.fingerprint)"


def unpriced_usage(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens of answers that were never charged."""
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'charges'")
    prompt, cached, completion = conn.execute(
        _UNPRICED + (_UNCHARGED if has.fetchone() else "")
    ).fetchone()
    return int(prompt), int(cached), int(completion)


def spent(conn: sqlite3.Connection) -> float:
    """Everything recorded as spent (worst case for attempts without usage)."""
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'charges'")
    (total,) = conn.execute(SPEND_SQL if has.fetchone() else OLD_SPEND_SQL).fetchone()
    return float(total)
