"""Rate limits a run learned from the API's headers, kept in the checkpoint's ``meta``.

The next run starts at them instead of from nothing, and ``batchrun plan`` can say
how long a job will take even when the job sets no limits. Stored as three rows
of ``meta``: ``learned_rpm``, ``learned_tpm`` and ``learned_at`` (a UTC date).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

_KEYS = ("learned_rpm", "learned_tpm", "learned_at")


@dataclass(frozen=True, slots=True)
class KeptLimits:
    """Requests and tokens per minute an earlier run learned, and the day it did."""

    rpm: int | None = None
    tpm: int | None = None
    learned_at: str | None = None  # ISO date, UTC

    @property
    def known(self) -> bool:
        return bool(self.rpm or self.tpm)


def read_kept(conn: sqlite3.Connection) -> KeptLimits:
    marks = ", ".join("?" * len(_KEYS))
    rows = dict(conn.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", _KEYS))
    return KeptLimits(
        rpm=_int(rows.get("learned_rpm")),
        tpm=_int(rows.get("learned_tpm")),
        learned_at=rows.get("learned_at"),
    )


def write_kept(conn: sqlite3.Connection, rpm: int | None, tpm: int | None) -> None:
    """Keep ``rpm``/``tpm``, dated today; None leaves a kept one as it is."""
    if not (rpm or tpm):
        return  # this run learned nothing: the kept limits (and their date) stand
    today = datetime.now(UTC).date().isoformat()
    values = [("learned_rpm", rpm), ("learned_tpm", tpm), ("learned_at", today)]
    conn.executemany(
        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
        [(key, str(value)) for key, value in values if value],
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None
