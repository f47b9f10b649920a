"""How a fingerprint is stored in the checkpoint: 32 bytes, not 67 characters.

``"v1:" + 64 hex digits`` (a sha256, ``send.requests.fingerprint``) is stored as the 32
bytes of the digest. At 1M rows that halves the key in the answers B-tree and the
charges index, which is most of what a commit writes. Any other string
(none is made by batchrun; tests use short ones) is stored as its UTF-8 bytes.

Checkpoints written before ``m004_binary_keys`` hold the text; the migration rewrites
it in place. A batchrun without that migration refuses such a checkpoint (unknown
migration) instead of finding none of its answers.
"""

from __future__ import annotations

import sqlite3

_PREFIX = "v1:"
_LENGTH = len(_PREFIX) + 64


def fp_key(fingerprint: str) -> bytes:
    """The stored key of ``fingerprint``.

    >>> fp_key("v1:" + "ab" * 32) == bytes.fromhex("ab" * 32)
    True
    """
    if len(fingerprint) == _LENGTH and fingerprint.startswith(_PREFIX):
        try:
            return bytes.fromhex(fingerprint[3:])
        except ValueError:
            pass
    return fingerprint.encode()


def _stored(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else fp_key(value)


def m004_binary_keys(conn: sqlite3.Connection) -> None:
    """Rewrite text fingerprints as keys. The columns keep their declared TEXT type:
    SQLite stores a BLOB in a TEXT column as is, and rebuilding 1M rows buys nothing."""
    conn.create_function("fp_key", 1, _stored, deterministic=True)
    conn.execute("UPDATE answers SET fingerprint = fp_key(fingerprint)")
    conn.execute("UPDATE charges SET fingerprint = fp_key(fingerprint)")
