"""Which API endpoint a checkpoint's answers came from (``meta.origin``), and which of
them batchrun's emulator gave (``answers.synthetic``, ``m008_synthetic_answers``).

A checkpoint holds the answers of one endpoint. A run against another one refuses to
start (exit 2) unless told that it is the same API at a new address (the stored origin
is then moved to the new one) or to start over (``--fresh``). A checkpoint written
before origins were recorded takes the endpoint of the first run that opens it.
"""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

from batchrun._errors import JobError

__all__ = ["EMULATED", "claim_origin", "endpoint_of", "m008_synthetic_answers", "stored_origin"]

EMULATED = "batchrun's emulator (--emulate)"
"""The origin of ``--emulate`` runs, whose emulator takes a new port each time."""
_DEFAULT_PORTS = {"http": 80, "https": 443}


def m008_synthetic_answers(conn: sqlite3.Connection) -> None:
    """Mark each answer that batchrun's emulator gave (its responses say so)."""
    conn.execute("ALTER TABLE answers ADD COLUMN synthetic INTEGER NOT NULL DEFAULT 0")


def endpoint_of(base_url: str) -> str:
    """``base_url`` spelled one way: scheme and host in lower case, no default port,
    no trailing slash.

    >>> endpoint_of("HTTPS://API.Example.com:443/v1/")
    'https://api.example.com/v1'
    """
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def stored_origin(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
    return None if row is None else str(row[0])


def claim_origin(
    conn: sqlite3.Connection, path: object, origin: str, *, moved: bool, elsewhere: bool
) -> None:
    """Record ``origin`` as the endpoint of the job's answers (this checkpoint's, and
    ``elsewhere``: its Ray workers' files); ``JobError`` when they came from another
    one, unless ``moved`` (the same API, a new address)."""
    stored = stored_origin(conn)
    if stored not in (None, origin) and not moved and (elsewhere or _has_answers(conn)):
        synthetic = _has_synthetic(conn)
        whose = "batchrun's emulator at " if synthetic and stored != EMULATED else ""
        raise JobError(
            f"checkpoint {path} holds answers from {whose}{stored}, not from {origin}"
            " (api.base_url): rerun with --fresh to discard them and send again, or with"
            " --endpoint-moved if it is the same API at a new address"
        )
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('origin', ?)", (origin,))


def _has_answers(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM answers LIMIT 1").fetchone() is not None


def _has_synthetic(conn: sqlite3.Connection) -> bool:
    # A full scan at worst, on the way to an error only.
    return conn.execute("SELECT 1 FROM answers WHERE synthetic = 1 LIMIT 1").fetchone() is not None
