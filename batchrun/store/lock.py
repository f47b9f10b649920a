"""The run lock: an exclusive ``flock`` on ``<checkpoint>.lock``, held for the life of a
``Checkpoint``; the kernel drops it when its holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from batchrun._errors import LockedError


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class JobLock:
    """An exclusive ``flock`` on ``<checkpoint>.lock``; the kernel drops it when we die."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, checkpoint: Path) -> JobLock:
        path = Path(f"{checkpoint}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise LockedError(
                f"another batchrun run of this job is running ({holder}): {checkpoint}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        _write_holder(fd)
        return cls(path, fd)

    def release(self) -> None:
        # The file stays: unlinking it would let a waiting opener lock an orphaned inode.
        # Emptied, so ``batchrun status`` finds no holder once the run has ended.
        os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the last descriptor releases the flock


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now_iso()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _describe_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        where = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
        return f"pid {holder['pid']}{where}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "pid unknown: it has only just started"  # it locks before it writes
