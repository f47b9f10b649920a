"""``batchrun status``: how far a job got, from its checkpoint, without disturbing a run.

Reads every checkpoint of the job (the local file and the Ray workers') through SQLite
read-only connections (``mode=ro``): WAL lets a reader see what a live run has committed
without blocking its writer, and no run lock is taken. Whether a run holds the lock is
read from the lock file (``store.lock`` writes pid, host and start time into it).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchrun._errors import JobError
from batchrun.io.input import open_input
from batchrun.job.config import Job
from batchrun.store.charges import spent
from batchrun.store.jobstore import ray_dir

__all__ = ["JobStatus", "job_status"]

_COUNTS_SQL = "SELECT status, error_type, COUNT(*) FROM answers GROUP BY status, error_type"


@dataclass
class JobStatus:
    """What ``batchrun status`` shows; ``to_dict`` is its JSON."""

    job: str
    checkpoint: str
    checkpoint_exists: bool
    input_rows: int
    answered_ok: int = 0
    failed: int = 0
    failed_by_error_type: dict[str, int] = field(default_factory=dict)
    pending_at_most: int = 0  # rows with an identical request share one answer
    spent_usd: float = 0.0
    max_cost_usd: float | None = None
    budget_left_usd: float | None = None
    running: bool = False
    lock_holder: dict[str, Any] | None = None  # pid, host, started
    last_commit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        failed = ", ".join(f"{t} {n}" for t, n in sorted(self.failed_by_error_type.items()))
        budget = "no limits.max_cost_usd"
        if self.budget_left_usd is not None:
            budget = f"${self.budget_left_usd:.4f} left of ${self.max_cost_usd}"
        lines = [
            f"{self.job}: {self.input_rows} input rows",
            f"  answered ok      {self.answered_ok}",
            f"  failed           {self.failed}{f' ({failed})' if failed else ''}",
            f"  pending          at most {self.pending_at_most}",
            f"  spent            ${self.spent_usd:.4f} ({budget})",
            f"  run              {self._run()}",
            f"  last commit      {self.last_commit or 'none'}",
            f"  checkpoint       {self.checkpoint}{'' if self.checkpoint_exists else ' (none)'}",
        ]
        return "\n".join(lines)

    def _run(self) -> str:
        holder = self.lock_holder
        if holder is None:
            return "none holds the lock"
        where = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
        if self.running:
            return f"running: {where}"
        return f"not running (the lock's last holder, {where}, is gone)"


def job_status(job: Job) -> JobStatus:
    """The job's progress from its checkpoints; never writes, never waits on a run."""
    path = job.output.checkpoint_path
    status = JobStatus(
        job=job.name,
        checkpoint=str(path),
        checkpoint_exists=path.is_file(),
        input_rows=open_input(job).count_rows(),
        max_cost_usd=job.limits.max_cost_usd,
    )
    files = [path] if path.is_file() else []
    files += sorted(ray_dir(job).glob("*.sqlite"))
    failed: Counter[str] = Counter()
    for file in files:
        _read(file, job.name, status, failed)
    status.failed, status.failed_by_error_type = sum(failed.values()), dict(failed)
    answers = status.answered_ok + status.failed
    status.pending_at_most = max(status.input_rows - answers, 0)
    if job.limits.max_cost_usd is not None:
        status.budget_left_usd = max(job.limits.max_cost_usd - status.spent_usd, 0.0)
    status.lock_holder, status.running = _lock_holder(Path(f"{path}.lock"))
    status.last_commit = _last_commit(files)
    return status


def _read(file: Path, job_name: str, status: JobStatus, failed: Counter[str]) -> None:
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise JobError(f"checkpoint {file}: cannot open it read-only: {exc}") from None
    try:
        owner = conn.execute("SELECT value FROM meta WHERE key = 'job_name'").fetchone()
        if owner is not None and owner[0] != job_name:
            raise JobError(f"checkpoint {file} belongs to job {owner[0]!r}, not {job_name!r}")
        for state, error_type, count in conn.execute(_COUNTS_SQL):
            if state == "ok":
                status.answered_ok += count
            elif state in ("error", "invalid"):
                failed[error_type or state] += count
        status.spent_usd += spent(conn)
    except sqlite3.Error as exc:
        raise JobError(f"checkpoint {file}: cannot read it: {exc}") from None
    finally:
        conn.close()


def _lock_holder(lock: Path) -> tuple[dict[str, Any] | None, bool]:
    """(what the lock file says of its holder, whether that process is alive)."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, False  # no lock file, or emptied by a run that ended
    if not isinstance(holder, dict) or "pid" not in holder:
        return None, False
    if holder.get("host") != socket.gethostname():
        return holder, True  # another machine's run: it cannot be checked from here
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return holder, False
    except PermissionError:
        pass  # alive, another user's
    return holder, True


def _last_commit(files: list[Path]) -> str | None:
    """A commit appends to the write-ahead log: its time is the newest file's change (a
    reader may create an empty log, which says nothing)."""
    times = []
    for file in files:
        for candidate in (file, Path(f"{file}-wal")):
            found = candidate.stat() if candidate.exists() else None
            if found is not None and (found.st_size or candidate == file):
                times.append(found.st_mtime)
    if not times:
        return None
    return datetime.fromtimestamp(max(times), UTC).isoformat(timespec="seconds")
