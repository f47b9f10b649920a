"""Write-ahead spend: every attempt that may be billed is in the checkpoint before it is sent.

Before a send, the dispatcher holds an ``Intent`` (the request's fingerprint and the
attempt's worst-case cost) in the run's ``IntentLog``; the checkpoint writer commits
every intent waiting there in one transaction (a group commit) and only then is the
request sent. A send waits for one small commit, milliseconds.

An intent settles when the attempt's outcome is known: the answer's commit (or a
pending row's charges) deletes it in the same transaction that records the attempt's
real cost (``Charge.intent``), and an attempt the API did not bill (a 429, a 5xx, a
refused request) is released, deleted at the next commit. An intent never settled (the
run was killed, or stopped while the request was on the wire or its row was waiting to
retry) stays in the checkpoint at its worst case: ``spent_usd`` counts it in every later
run, so no stop loses an attempt the API may have billed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from batchrun.store.fpkey import fp_key

INTENT_SPEND_SQL = "SELECT TOTAL(cost_usd) FROM intents"
_INSERT_SQL = "INSERT INTO intents (id, fingerprint, cost_usd, at) VALUES (?, ?, ?, ?)"
_DELETE_SQL = "DELETE FROM intents WHERE id = ?"


def m007_intents(conn: sqlite3.Connection) -> None:
    """Attempts sent whose outcome is not recorded yet, at their worst-case cost."""
    conn.execute(
        """
        CREATE TABLE intents (
            id INTEGER PRIMARY KEY,
            fingerprint BLOB NOT NULL,
            cost_usd REAL NOT NULL,  -- the attempt's worst case, counted until it settles
            at INTEGER  -- microseconds since the Unix epoch, UTC
        )
        """
    )


@dataclass(eq=False, slots=True)
class Intent:
    """One attempt about to be sent; ``id`` is set once it is committed."""

    fingerprint: str
    cost_usd: float
    at: float
    id: int | None = None
    released: bool = False


class WriterClosedError(RuntimeError):
    """The checkpoint writer ended: nothing may be sent any more."""


class IntentLog:
    """Intents between the dispatcher (``hold``, ``release``) and the checkpoint writer
    (``take``, ``committed``), in one event loop."""

    def __init__(self) -> None:
        self._new: list[Intent] = []
        self._released: list[int] = []
        self._work = anyio.Event()
        self._committed = anyio.Event()
        self.closed = False

    async def hold(self, fingerprint: str, cost_usd: float, at: float) -> Intent:
        """Record the attempt; return once it is committed. Cancelled meanwhile, it is
        released (deleted if it was already written)."""
        if self.closed:
            raise WriterClosedError("the checkpoint writer has ended")
        intent = Intent(fingerprint, cost_usd, at)
        self._new.append(intent)
        self._work.set()
        try:
            while intent.id is None and not self.closed:
                await self._committed.wait()
            if self.closed:  # written or not, it is not sent
                raise WriterClosedError("the checkpoint writer has ended")
        except BaseException:
            self.release(intent)
            raise
        return intent

    def release(self, intent: Intent) -> None:
        """The attempt was not billed (or never sent): its intent goes at the next commit."""
        if intent.id is None:
            intent.released = True  # not written yet: ``take`` or ``committed`` drops it
        else:
            self._released.append(intent.id)
            self._work.set()

    @property
    def has_work(self) -> bool:
        return bool(self._new or self._released)

    async def wait_for_work(self) -> None:
        while not self.has_work:
            await self._work.wait()
            self._work = anyio.Event()

    def take(self) -> tuple[list[Intent], list[int]]:
        """What the next commit writes: new intents (released ones dropped), ids to delete."""
        new = [intent for intent in self._new if not intent.released]
        released, self._new, self._released = self._released, [], []
        return new, released

    def committed(self, new: Sequence[Intent], ids: Sequence[int]) -> None:
        """``new`` is in the checkpoint under ``ids``: wake their senders; an intent
        released while it was being written is deleted at the next commit."""
        for intent, id_ in zip(new, ids, strict=True):
            intent.id = id_
            if intent.released:
                self._released.append(id_)
                self._work.set()
        self._committed.set()
        self._committed = anyio.Event()

    def close(self) -> None:
        """The writer ends: intents not written yet are never sent (``hold`` raises)."""
        self.closed = True
        self._committed.set()


class IntentIds:
    """Ids for a checkpoint's intents: one writer, so a counter from the highest stored."""

    def __init__(self) -> None:
        self.next: int | None = None

    def write(
        self, conn: sqlite3.Connection, new: Sequence[Intent], released: list[int]
    ) -> list[int]:
        """Insert ``new`` and delete ``released`` in the caller's transaction; the new ids."""
        settle(conn, released)
        if not new:
            return []
        if self.next is None:
            (top,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM intents").fetchone()
            self.next = int(top) + 1
        first, self.next = self.next, self.next + len(new)
        rows = [
            (first + i, fp_key(it.fingerprint), it.cost_usd, int(it.at * 1e6))
            for i, it in enumerate(new)
        ]
        conn.executemany(_INSERT_SQL, rows)
        return [row[0] for row in rows]


def settle(conn: sqlite3.Connection, ids: list[int]) -> None:
    """Delete the intents of attempts whose outcome is now recorded (or not billed)."""
    if ids:
        conn.executemany(_DELETE_SQL, [(i,) for i in ids])


def unsettled(conn: sqlite3.Connection) -> float:
    """The worst case of every intent never settled (0.0 before ``m007_intents``)."""
    has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'intents'")
    if has.fetchone() is None:
        return 0.0
    return float(conn.execute(INTENT_SPEND_SQL).fetchone()[0])
