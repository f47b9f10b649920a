"""The durable store behind "a killed run resumes without paying twice".

Answers are keyed by request fingerprint (a versioned content hash of the wire
body), together with the key of the row that paid for it (``owner_key``). A row
is finished iff its current request's fingerprint has an answer, so a changed
template re-sends exactly the rows whose request changed.

Durability: SQLite in WAL mode with ``synchronous=NORMAL``. Every commit is in
the WAL file before ``commit`` returns, so a killed process (``kill -9``,
OOM-killer, Ctrl-C) loses nothing committed and the file always reopens
cleanly. A power loss or OS crash may lose the last commits (never corrupt the
file); those rows are simply sent again.

One run of a job at a time: ``<checkpoint>.lock`` is held with ``flock`` for the
life of a ``Checkpoint``. The kernel drops the lock when its holder dies, so a
killed run never leaves a stale lock behind. Do not delete the lock file while
a run is going: a new run would lock a new file and both would run.

    with Checkpoint.open(Path("out/x.parquet.ckpt.sqlite"), job_name="x") as ckpt:
        done = ckpt.lookup([request.fingerprint for request in requests])

sqlite3 and OS errors are translated into ``batchrun._errors`` here and nowhere else.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream

from batchrun._errors import JobError, redactor
from batchrun._types import Answer, RequestResult
from batchrun.store.answers import (
    has_migration,
    is_compact,
)
from batchrun.store.batchdone import DoneBatch
from batchrun.store.charges import (
    INSERT_CHARGES_SQL,
    charge_rows,
    spent,
    unpriced_usage,
)
from batchrun.store.intents import Intent, IntentIds, IntentLog, settle
from batchrun.store.keptlimits import KeptLimits, read_kept, write_kept
from batchrun.store.lock import JobLock
from batchrun.store.openmark import WalMark, check_whole
from batchrun.store.origin import claim_origin
from batchrun.store.rows import (
    Row,
    insert_rows,
    select_answered,
    select_answers,
    to_row,
)
from batchrun.store.schema import (
    MIGRATIONS,
    claim_for_job,
    connect,
    foreign_job,
    remove_database,
    transaction,
)

__all__ = ["COMMIT_INTERVAL_S", "COMMIT_ROWS", "MIGRATIONS", "Checkpoint", "CheckpointReader"]

COMMIT_INTERVAL_S = 0.5
"""Longest time a received answer waits before it is committed."""
COMMIT_ROWS = 4096
"""Pending answers that trigger a commit before the interval is up. Large, as a commit
writes each B-tree page it touched and random keys share pages only in a big one."""
INTENT_GAP_S = 0.005
"""Shortest time between two commits of intents (write-ahead spend): the first send after
a quiet spell waits for one commit only; under load, each commit holds every send that
came in the gap, so its cost (~45 µs of CPU, whatever its size) stays under 1% of a core.
"""
_GATHER_S = 0.02
"""How long the writer lets answers gather in its stream after it wakes for one."""

# ---------------------------------------------------------------- sqlite helpers


@contextmanager
def _translated(path: Path, doing: str) -> Iterator[None]:
    """The one boundary where sqlite3 and OS errors become batchrun errors."""
    try:
        yield
    except sqlite3.Error as exc:
        raise JobError(
            f"checkpoint {path}: cannot {doing}: {exc} "
            "(move the file away or rerun with --fresh to start over)"
        ) from exc
    except OSError as exc:
        raise JobError(f"checkpoint {path}: cannot {doing}: {exc}") from exc


# ---------------------------------------------------------------- writer batch


@dataclass
class _Pending:
    """Answers (and charges) received but not yet committed."""

    rows: list[Row] = field(default_factory=list)
    charges: list[Row] = field(default_factory=list)
    settled: list[int] = field(default_factory=list)  # intents these charges settle
    fingerprints: list[str] = field(default_factory=list)
    deadline: float = math.inf
    redact: Callable[[str], str] = field(default_factory=redactor)

    def add(self, item: RequestResult) -> None:
        if not self.fingerprints:
            self.deadline = anyio.current_time() + COMMIT_INTERVAL_S
        request, result = item
        self.fingerprints.append(request.fingerprint)
        if result.charges:  # those the answer row does not keep (own_charge)
            self.charges.extend(charge_rows(request, result))
            self.settled.extend(c.intent for c in result.charges if c.intent is not None)
        if result.status != "pending":
            self.rows.append(to_row(item, self.redact))

    def due(self) -> bool:
        return len(self.fingerprints) >= COMMIT_ROWS or anyio.current_time() >= self.deadline

    def clear(self) -> None:
        self.rows, self.charges, self.settled, self.fingerprints = [], [], [], []
        self.deadline = math.inf
        self.redact = redactor()


def _drain_buffered(
    results: ObjectReceiveStream[RequestResult], pending: _Pending, limit: float = math.inf
) -> None:
    """Take answers already sitting in a memory stream's buffer, without waiting."""
    if not isinstance(results, MemoryObjectReceiveStream):
        return
    while len(pending.fingerprints) < limit:
        try:
            pending.add(results.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return


# ---------------------------------------------------------------- the store


class Checkpoint:
    """Answers of one job, in SQLite, with the job's run lock held while open.

    ``open`` takes the lock; ``write_results`` is the one task that writes;
    ``lookup`` may be called from the event loop meanwhile. One sqlite3
    connection is shared between the event loop and the writer's worker thread,
    guarded by a lock so only one thread uses it at a time.
    """

    def __init__(
        self, path: Path, conn: sqlite3.Connection, lock: JobLock, wal_mark: WalMark
    ) -> None:
        self.path = path
        self._conn = conn
        self._job_lock: JobLock | None = lock
        self._mutex = threading.Lock()
        self._intent_ids = IntentIds()
        self._wal_mark = wal_mark

    @classmethod
    def open(
        cls, path: Path, *, job_name: str, fresh: bool = False, has_output: bool = False
    ) -> Checkpoint:
        """Open (or create) the checkpoint at ``path`` and take the job's run lock.

        ``fresh=True`` starts over: earlier answers (and their spend) are dropped.
        Raises ``LockedError`` naming the running pid if another run holds the
        lock, ``JobError`` if the file is unreadable, belongs to another job, or lost
        its answers (``store.openmark``; ``has_output``: the job has written its output).
        """
        path = Path(path)
        with _translated(path, "create its directory"):
            path.parent.mkdir(parents=True, exist_ok=True)
        with _translated(path, "take the run lock"):
            lock = JobLock.acquire(path)
        try:
            if not fresh:
                check_whole(path, has_output)
            conn, wal_mark = cls._open_database(path, job_name=job_name, fresh=fresh)
        except BaseException:
            lock.release()
            raise
        return cls(path, conn, lock, wal_mark)

    @staticmethod
    def _open_database(
        path: Path, *, job_name: str, fresh: bool
    ) -> tuple[sqlite3.Connection, WalMark]:
        # Under the lock, so starting over cannot pull the file from under a live run.
        with _translated(path, "open it"):
            if fresh:
                remove_database(path)  # also recovers from a corrupt file
            conn = connect(path)
        try:
            with _translated(path, "read its job name"):
                claim_for_job(conn, path, job_name)
            with _translated(path, "mark it open"):
                wal_mark = WalMark(conn, path)  # set before the first answer is stored
        except BaseException:
            conn.close()
            raise
        return conn, wal_mark

    def lookup(
        self, fingerprints: Sequence[str], *, include_failed: bool = True
    ) -> dict[str, Answer]:
        """Finished answers among ``fingerprints``; ``include_failed=False`` omits errors.

        Fingerprints without an answer are simply absent, so a resume sends
        exactly the requests missing from ``ckpt.lookup(fps)``. Blocks for at
        most one in-progress commit of the writer task.
        """
        with self._using("look up answers"):
            return select_answers(self._conn, fingerprints, include_failed, True)

    def answered(self, fingerprints: Sequence[str], *, include_failed: bool = True) -> set[str]:
        """Which of ``fingerprints`` have an answer: ``lookup`` without reading the answers
        (what a resume asks of every row before it sends anything)."""
        with self._using("look up answers"):
            return select_answered(self._conn, fingerprints, include_failed, True)

    def done_batch(self, digest: bytes, *, include_failed: bool = True) -> DoneBatch | None:
        """The recorded batch (``store.batchdone``) named ``digest``, unless it is not recorded
        or (``include_failed=False``) has an error answer to send again."""
        failed = "" if include_failed else " AND errors = 0"
        sql = f"SELECT requests, invalid, errors FROM done_batches WHERE digest = ?{failed}"
        with self._using("look up done batches"):
            row = self._conn.execute(sql, (digest,)).fetchone()
        return None if row is None else DoneBatch(digest, row[0], row[1], bool(row[2]))

    def record_done_batches(self, batches: Sequence[DoneBatch]) -> None:
        """Record batches whose every request has an answer (the output pass finds them)."""
        rows = [(b.digest, b.requests, b.invalid, int(b.errors)) for b in batches]
        with self._using("record done batches"), transaction(self._conn):
            self._conn.executemany("INSERT OR REPLACE INTO done_batches VALUES (?, ?, ?, ?)", rows)

    def claim_endpoint(self, origin: str, *, moved: bool = False, elsewhere: bool = False) -> None:
        """Record ``origin`` (``store.origin.endpoint_of``) as the endpoint of the job's
        answers (here, and ``elsewhere``: Ray workers' files hold some); ``JobError``
        (exit 2) when they came from another one, unless ``moved`` (the same API at a new
        address). Call before anything is sent."""
        with self._using("record the endpoint"), transaction(self._conn):
            claim_origin(self._conn, self.path, origin, moved=moved, elsewhere=elsewhere)

    def spent_usd(self) -> float:
        """Spend recorded in this checkpoint over all runs since it was created: every
        charge, at its real cost or (usage unknown) the worst case it reserved."""
        with self._using("sum the spend"):
            return spent(self._conn)

    def unpriced_usage(self) -> tuple[int, int, int]:
        """Tokens of answers stored unpriced (``batchrun.store.charges.unpriced_usage``)."""
        with self._using("sum the unpriced usage"):
            return unpriced_usage(self._conn)

    def counts(self) -> dict[str, int]:
        """Number of answers per status, e.g. ``{"ok": 950, "error": 3}``."""
        with self._using("count answers"):
            rows = self._conn.execute("SELECT status, COUNT(*) FROM answers GROUP BY status")
            return dict(rows.fetchall())

    def learned_limits(self) -> KeptLimits:
        """The rate limits a run learned from the API's headers (``batchrun.store.keptlimits``)."""
        with self._using("read the learned limits"):
            return read_kept(self._conn)

    def keep_learned_limits(self, rpm: int | None, tpm: int | None) -> None:
        """Keep what this run learned, for the next run and ``plan``."""
        with self._using("keep the learned limits"), transaction(self._conn):
            write_kept(self._conn, rpm, tpm)

    async def write_results(
        self,
        results: ObjectReceiveStream[RequestResult],
        on_commit: Callable[[list[str]], None] | None = None,
        intents: IntentLog | None = None,
    ) -> None:
        """Store every ``(request, result)`` received, committing in batches: the answer
        (its ``cost_usd`` as priced by the dispatcher, plus earlier runs' known charges
        when it replaces a failed answer) with its known charges (``paid_usd``), and
        its other ``result.charges`` in the charges table (``batchrun.store.charges``).

        A batch commits when ``COMMIT_ROWS`` are pending or ``COMMIT_INTERVAL_S``
        after its first item, in a worker thread; ``on_commit(fingerprints)``
        follows each commit. When the stream ends, or this task is cancelled,
        what it holds (and what is buffered in a memory stream) is committed.
        Run exactly one of these per checkpoint.

        ``intents`` (``batchrun.store.intents``): the attempts about to be sent, committed
        together (a group commit) at most ``INTENT_GAP_S`` after the first one came.
        """
        pending = _Pending()
        try:
            async with anyio.create_task_group() as tg:
                if intents is not None:
                    tg.start_soon(self._write_ahead, intents)
                while await _receive_until_due(results, pending):
                    if pending.due():
                        await self._commit(pending, on_commit)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                _drain_buffered(results, pending)  # answers buffered there are paid for
                await results.aclose()
                await self._commit(pending, on_commit)
                if intents is not None:  # releases only: nothing is sent after the writer
                    intents.close()
                    await self._commit_intents(intents)

    def close(self) -> None:
        """Close the database and release the run lock. Safe to call twice."""
        with self._mutex:
            if self._job_lock is None:
                return
            self._conn.close()
            self._job_lock.release()
            self._job_lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals

    async def _commit(
        self, pending: _Pending, on_commit: Callable[[list[str]], None] | None
    ) -> None:
        fingerprints = pending.fingerprints
        if not fingerprints:
            return
        # The thread runs to its end even if we are cancelled, and nothing yields before
        # the clear: charges are never appended twice.
        await anyio.to_thread.run_sync(self._insert, pending.rows, pending.charges, pending.settled)
        pending.clear()
        if on_commit is not None:
            on_commit(fingerprints)

    async def _write_ahead(self, intents: IntentLog) -> None:
        last = -math.inf
        while True:
            await intents.wait_for_work()
            # At most one commit of intents per gap: those held meanwhile join it.
            await anyio.sleep(max(last + INTENT_GAP_S - anyio.current_time(), 0.0))
            last = anyio.current_time()
            await self._commit_intents(intents)

    async def _commit_intents(self, intents: IntentLog) -> None:
        new, released = intents.take()
        if intents.closed:
            new = []  # their senders were told the writer ended: they send nothing
        if not (new or released):
            return
        # A few rows: written here when the connection is free (a thread hop costs more
        # than the commit), else in a thread once the answers' commit is done. Shielded:
        # what was taken is written and handed over, even when cancelled.
        ids = self._insert_intents(new, released, wait=False)
        if ids is None:
            with anyio.CancelScope(shield=True):
                ids = await anyio.to_thread.run_sync(self._insert_intents, new, released)
        intents.committed(new, ids or [])

    def _insert_intents(
        self, new: list[Intent], released: list[int], wait: bool = True
    ) -> list[int] | None:
        if not self._mutex.acquire(blocking=wait):
            return None
        try:
            with _translated(self.path, "write the attempts about to be sent"):
                if self._job_lock is None:
                    raise JobError(f"checkpoint {self.path} is closed")
                with transaction(self._conn):
                    return self._intent_ids.write(self._conn, new, released)
        finally:
            self._mutex.release()

    def _insert(self, rows: list[Row], charges: list[Row], settled: list[int]) -> None:
        with self._using("write answers"), transaction(self._conn):
            self._conn.executemany(INSERT_CHARGES_SQL, charges)  # first: answers read them
            insert_rows(self._conn, rows)
            settle(self._conn, settled)
            self._conn.execute(_COUNT_COMMIT_SQL)
        with self._using("mark it open"):
            self._wal_mark.keep()

    def forget_failed(self, error_type: str, message: str) -> int:
        """Drop the answers that failed with exactly this error (a job-level failure, not
        the rows'), so the next run sends them again; answers with paid charges stay."""
        with self._using("forget failed answers"), transaction(self._conn):
            deleted = self._conn.execute(_FORGET_SQL, (error_type, message)).rowcount
            self._conn.execute(_COUNT_COMMIT_SQL)  # an output written before is stale
        return int(deleted)

    def commits(self) -> int:
        """How many commits of answers this file has had: an output written at one count
        is stale at another (a ``--retry-failed`` killed before its output pass)."""
        with self._using("read the commit count"):
            row = self._conn.execute(_COMMITS_SQL).fetchone()
        return int(row[0]) if row else 0

    @contextmanager
    def _using(self, doing: str) -> Iterator[None]:
        with self._mutex, _translated(self.path, doing):
            if self._job_lock is None:
                raise JobError(f"checkpoint {self.path} is closed")
            yield


_COUNT_COMMIT_SQL = (
    "INSERT INTO meta VALUES ('answer_commits', '1')"
    " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)
_FORGET_SQL = (
    "DELETE FROM answers WHERE status = 'error' AND error_type = ? AND error_message = ?"
    " AND paid_usd IS NULL"
)
_COMMITS_SQL = "SELECT value FROM meta WHERE key = 'answer_commits'"


async def _receive_until_due(
    results: ObjectReceiveStream[RequestResult], pending: _Pending
) -> bool:
    """Add the next item to ``pending`` unless its commit falls due first, then what
    else arrives within ``_GATHER_S``; False at the end of the stream."""
    with anyio.CancelScope(deadline=pending.deadline):
        try:
            pending.add(await results.receive())
        except anyio.EndOfStream:
            return False
        # Not a poll: this follows an answer received. A busy stream then wakes this
        # task once per gathering instead of once per answer.
        await anyio.sleep(_GATHER_S)
    _drain_buffered(results, pending, limit=COMMIT_ROWS)
    return True


# ---------------------------------------------------------------- read-only view


class CheckpointReader:
    """A read-only look at a job's checkpoint that takes no run lock (``batchrun plan``).

    WAL lets it read what a live run has committed without blocking that run;
    nothing is written, migrated or claimed (SQLite may add its empty ``-wal`` and
    ``-shm`` side files, which a run would create anyway).
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        with _translated(path, "read its schema"):
            self._compact = is_compact(conn)  # not migrated here: may be an older layout
            self._marked = has_migration(conn, "m008_synthetic_answers")
            self._reasks = has_migration(conn, "m009_reasks")

    @classmethod
    def open(cls, path: Path, *, job_name: str) -> CheckpointReader | None:
        """None when no checkpoint exists yet; ``JobError`` if it belongs to another job."""
        path = Path(path)
        if not path.is_file():
            return None
        with _translated(path, "open it read-only"):
            uri = f"{path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            with _translated(path, "read its job name"):
                owner = conn.execute("SELECT value FROM meta WHERE key = 'job_name'").fetchone()
        except BaseException:
            conn.close()
            raise
        if owner is not None and owner[0] != job_name:
            conn.close()
            raise foreign_job(path, owner[0], job_name)
        return cls(path, conn)

    def lookup(
        self, fingerprints: Sequence[str], *, include_failed: bool = True
    ) -> dict[str, Answer]:
        """As ``Checkpoint.lookup``."""
        with _translated(self.path, "look up answers"):
            return select_answers(
                self._conn, fingerprints, include_failed, self._compact, self._marked, self._reasks
            )

    def answered(self, fingerprints: Sequence[str], *, include_failed: bool = True) -> set[str]:
        """As ``Checkpoint.answered``."""
        with _translated(self.path, "look up answers"):
            return select_answered(self._conn, fingerprints, include_failed, self._compact)

    def spent_usd(self) -> float:
        """As ``Checkpoint.spent_usd``."""
        with _translated(self.path, "sum the spend"):
            return spent(self._conn)

    def unpriced_usage(self) -> tuple[int, int, int]:
        """As ``Checkpoint.unpriced_usage``."""
        with _translated(self.path, "sum the unpriced usage"):
            return unpriced_usage(self._conn)

    def learned_limits(self) -> KeptLimits:
        """As ``Checkpoint.learned_limits``."""
        with _translated(self.path, "read the learned limits"):
            return read_kept(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
