"""One store for both engines: a job's answers live in its checkpoint and in ``<checkpoint>.ray/``.

The local engine (and ``plan --pilot``) writes ``<checkpoint>``; each Ray worker writes
its own file in ``<checkpoint>.ray/``. Every reader of a job's answers (a local run, the
Ray driver and its workers, ``plan``) sees all of these files through one ``JobStore``:
an answer in any of them is not sent again, and the spend of all of them counts against
the budget. So switching engines never pays for an answer twice, and ``--fresh`` clears
both (``clear_ray_dir``, under the job's run lock).

Answers stored while the model had no price were charged nothing. When the job sets a
budget, their usage is priced at the job's current price and counted as spent.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batchrun._errors import JobError
from batchrun._types import Answer
from batchrun.job.config import Job, Price
from batchrun.store.batchdone import DoneBatch
from batchrun.store.checkpoint import Checkpoint, CheckpointReader
from batchrun.store.intents import IntentLog
from batchrun.store.keptlimits import KeptLimits


def ray_dir(job: Job) -> Path:
    """The Ray workers' checkpoints of ``job``: ``<checkpoint>.ray/``."""
    path = job.output.checkpoint_path
    return path.with_name(path.name + ".ray")


def clear_ray_dir(job: Job) -> None:
    """``--fresh``: drop the Ray workers' answers too (the caller holds the run lock)."""
    shutil.rmtree(ray_dir(job), ignore_errors=True)


def budget_price(job: Job) -> Price | None:
    """The price unpriced answers are counted at: the job's, when it sets a budget."""
    return job.price if job.limits.max_cost_usd is not None else None


def local_store(ckpt: Checkpoint, job: Job) -> JobStore:
    """The local engine's view: its checkpoint, written; the Ray workers' files, read."""
    return JobStore(ckpt, ray_dir(job), job.name, price=budget_price(job))


def read_only_store(job: Job) -> JobStore:
    """``plan``'s view: every file of the job, read-only, no lock taken."""
    also = [job.output.checkpoint_path]
    return JobStore(None, ray_dir(job), job.name, also=also, price=budget_price(job))


class JobStore:
    """The checkpoint surface a run needs, over its own file (written; None: read-only)
    and every other checkpoint of the job (read-only, found afresh at each lookup)."""

    def __init__(
        self,
        own: Checkpoint | None,
        directory: Path,
        job_name: str,
        also: Sequence[Path] = (),
        *,
        price: Price | None = None,
    ) -> None:
        self.own = own
        self.directory = directory
        self.job_name = job_name
        self.also = list(also)
        self.price = price
        self.readers: dict[Path, CheckpointReader] = {}

    @property
    def exists(self) -> bool:
        """True when the job has any checkpoint file yet."""
        return self.own is not None or bool(self._others())

    def lookup(
        self, fingerprints: Sequence[str], *, include_failed: bool = True
    ) -> dict[str, Answer]:
        # Own answers first: where two workers raced on one request, each row keeps its own.
        found: dict[str, Answer] = {}
        if self.own is not None:
            found = self.own.lookup(fingerprints, include_failed=include_failed)
        for reader in self._others():
            missing = [fp for fp in fingerprints if fp not in found]
            if not missing:
                break
            found.update(reader.lookup(missing, include_failed=include_failed))
        return found

    def answered(self, fingerprints: Sequence[str], *, include_failed: bool = True) -> set[str]:
        found: set[str] = set()
        if self.own is not None:
            found = self.own.answered(fingerprints, include_failed=include_failed)
        for reader in self._others():
            missing = [fp for fp in fingerprints if fp not in found]
            if not missing:
                break
            found |= reader.answered(missing, include_failed=include_failed)
        return found

    def done_batch(self, digest: bytes, *, include_failed: bool = True) -> DoneBatch | None:
        """As ``Checkpoint.done_batch``, from the run's own file (a read-only view has none)."""
        if self.own is None:
            return None
        return self.own.done_batch(digest, include_failed=include_failed)

    def record_done_batches(self, batches: Sequence[DoneBatch]) -> None:
        """As ``Checkpoint.record_done_batches``, in the run's own file."""
        if self.own is not None:
            self.own.record_done_batches(batches)

    def spent_usd(self) -> float:
        """Every charge in every file, plus (with a price) answers stored unpriced."""
        files: list[Checkpoint | CheckpointReader] = list(self._others())
        if self.own is not None:
            files.append(self.own)
        spent = sum(f.spent_usd() for f in files)
        if self.price is not None:
            spent += sum(self.price.cost(*f.unpriced_usage()) for f in files)
        return spent

    def commits(self) -> int:
        """As ``Checkpoint.commits``, of the run's own file (0 for a read-only view)."""
        return 0 if self.own is None else self.own.commits()

    def learned_limits(self) -> KeptLimits:
        if self.own is not None:
            return self.own.learned_limits()
        main = [r for r in self._others() if r.path in self.also]
        return main[0].learned_limits() if main else KeptLimits()

    def keep_learned_limits(self, rpm: int | None, tpm: int | None) -> None:
        if self.own is not None:
            self.own.keep_learned_limits(rpm, tpm)

    async def write_results(
        self,
        results: Any,
        on_commit: Callable[[list[str]], None] | None = None,
        intents: IntentLog | None = None,
    ) -> None:
        if self.own is None:
            raise JobError("a read-only view of the checkpoints cannot store answers")
        await self.own.write_results(results, on_commit, intents)

    def close(self) -> None:
        self.close_readers()
        if self.own is not None:
            self.own.close()

    def close_readers(self) -> None:
        """Close the other files' readers; leave ``own`` open (its owner closes it)."""
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_readers()

    def _others(self) -> list[CheckpointReader]:
        """Newest files first, so a retried row's latest answer wins."""
        for path in [*sorted(self.directory.glob("*.sqlite")), *self.also]:
            if path in self.readers or (self.own is not None and path == self.own.path):
                continue
            try:
                reader = CheckpointReader.open(path, job_name=self.job_name)
            except JobError:
                if path in self.also:
                    raise  # the job's own checkpoint: another job's, or unreadable
                continue  # a worker still creating it: it holds nothing yet
            if reader is not None:
                self.readers[path] = reader
        return sorted(self.readers.values(), key=lambda r: _mtime(r.path), reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
