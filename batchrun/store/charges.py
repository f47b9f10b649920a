"""The checkpoint's record of charges: every attempt that may have been billed, kept.

An answer keeps its own known charges (attempts whose usage came back) in its row,
``answers.paid_usd``; the ``charges`` table is appended the rest: attempts without
usage (charged at the worst case reserved), and the attempts of a row given up unanswered.
Since ``m006_compact_answers`` (before it, every charge was a row of the table), so a
commit of answers that each cost one attempt writes no charge rows at all (issue 14).

Answers are replaced when a failed row is retried; charges never are: the replacing
answer's ``paid_usd`` is the old one's plus its own (``answers.replace``). So the spend a
later budget counts (``spent``) and a row's ``cost_usd`` (its request's known charges,
over every run) survive ``--retry-failed``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from batchrun._types import Request, Result
from batchrun.store.answers import is_compact
from batchrun.store.fpkey import fp_key
from batchrun.store.intents import unsettled

ChargeRow = tuple[bytes, float, int, int]

INSERT_CHARGES_SQL = (
    "INSERT INTO charges (fingerprint, cost_usd, usage_known, at) VALUES (?, ?, ?, ?)"
)
SPEND_SQL = "SELECT TOTAL(cost_usd) FROM charges"
OWN_SPEND_SQL = "SELECT TOTAL(paid_usd) FROM answers"  # since m006
OLD_SPEND_SQL = "SELECT TOTAL(cost_usd) FROM answers"  # a checkpoint not yet migrated


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


def own_charge(result: Result) -> float | None:
    """What an answer keeps in its row: the sum of its known charges (None: none)."""
    if result.status == "pending":
        return None  # no answer row: every charge goes to the table
    known = [charge.cost_usd for charge in result.charges if charge.usage_known]
    return sum(known) if known else None


def charge_rows(request: Request, result: Result) -> Iterator[ChargeRow]:
    """The charges table's rows for ``result``: all of a pending one's, else those
    without usage."""
    answered = result.status != "pending"
    others = [c for c in result.charges if not (answered and c.usage_known)]
    if not others:  # the common case, on every answer: no key to convert
        return
    key = fp_key(request.fingerprint)
    for charge in others:
        yield key, charge.cost_usd, int(charge.usage_known), int(charge.at * 1e6)


# Answers stored while the model had no price: usage known, nothing charged for it.
_UNPRICED = (
    "SELECT TOTAL(prompt_tokens), TOTAL(COALESCE(cached_tokens, 0)),"
    " TOTAL(COALESCE(completion_tokens, 0)) FROM answers AS a"
    " WHERE a.cost_usd IS NULL AND a.prompt_tokens IS NOT NULL"
)
_UNCHARGED = " AND NOT EXISTS (SELECT 1 FROM charges AS c WHERE c.fingerprint = a.fingerprint)"
_UNPAID = " AND a.paid_usd IS NULL"


def unpriced_usage(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens of answers that were never charged."""
    sql = _UNPRICED
    if _has_charges(conn):
        sql += _UNCHARGED + (_UNPAID if is_compact(conn) else "")
    prompt, cached, completion = conn.execute(sql).fetchone()
    return int(prompt), int(cached), int(completion)


def spent(conn: sqlite3.Connection) -> float:
    """Everything recorded as spent (worst case for attempts without usage), and every
    attempt sent but never settled, at its worst case (``store.intents``)."""
    if not _has_charges(conn):
        return float(conn.execute(OLD_SPEND_SQL).fetchone()[0])
    (total,) = conn.execute(SPEND_SQL).fetchone()
    if is_compact(conn):
        total += conn.execute(OWN_SPEND_SQL).fetchone()[0]
    return float(total) + unsettled(conn)


def _has_charges(conn: sqlite3.Connection) -> bool:
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'charges'")
    return has.fetchone() is not None
