"""Whether a checkpoint kept its answers: refused before anything is sent when it lost them.

SQLite in WAL mode keeps recent commits in ``<checkpoint>-wal`` until they are folded into
the main file; a clean close folds them all in and removes the ``-wal``. A killed run's
answers are in its ``-wal``, so a main file copied (or restored) without it would look
like a checkpoint with fewer answers, and those rows would be sent and paid for again.
An empty file where the job has written its output is the same loss, all of it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batchrun._errors import JobError

# The mark sits in the main file while its removal sits in the ``-wal`` only: a main file
# that still has it lost the ``-wal``'s answers. Anything that folds the ``-wal`` in (a
# clean close, SQLite's checkpoint every 32 MB, any SQLite client) folds the removal in
# too; after a fold the writer sets the mark again (``WalMark.keep``).
_MARK = "INSERT OR REPLACE INTO meta VALUES ('wal_holds_answers', '1')"
_UNMARK = "DELETE FROM meta WHERE key = 'wal_holds_answers'"


class WalMark:
    """The writer's side: ``keep()`` after each commit sets the mark again after a fold."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._wal = Path(f"{path}-wal")
        self._salts = b""
        self.keep()

    def keep(self) -> None:
        if self._read_salts() == self._salts:
            return  # the -wal has not been restarted: the removal is still only there
        self._conn.execute(_MARK)
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the mark into the main file
        self._conn.execute(_UNMARK)
        self._salts = self._read_salts()

    def _read_salts(self) -> bytes:
        """The -wal header's salts: new ones each time the -wal restarts after a fold."""
        try:
            with self._wal.open("rb") as wal:
                return wal.read(24)[16:]
        except OSError:
            return b""


def check_whole(path: Path, has_output: bool) -> None:
    """Refuse a checkpoint that lost its answers, before anything is sent again."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    start_over = "rerun with --fresh to start over (every row is sent and paid for again)"
    if size == 0 and has_output:
        raise JobError(
            f"checkpoint {path} is empty, but this job has written its output: its answers "
            f"are lost; restore the file, or {start_over}"
        )
    if size and not Path(f"{path}-wal").exists() and _marked_open(path):
        raise JobError(
            f"checkpoint {path}: its {path.name}-wal file is missing, and held answers "
            f"(copied without it?); put it back beside the checkpoint, or {start_over}"
        )


def _marked_open(path: Path) -> bool:
    """Whether the main file alone (not its ``-wal``) says a writer had it open."""
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?immutable=1", uri=True)
        try:
            row = conn.execute("SELECT 1 FROM meta WHERE key = 'wal_holds_answers'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False  # no meta table yet, or unreadable: opening it says what is wrong
    return row is not None
