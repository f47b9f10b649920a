"""Dedupe across Ray workers: each fingerprint is sent by the one batch that claims it.

Identical requests (one fingerprint) in batches on two workers would both be sent: each
worker checks only the store, and neither has the answer yet. So before sending, a
worker claims its batch's fingerprints at the coordinator (``Claims``, held there). It
sends only those it got; the rest it sets aside until the batch holding them has
finished and released them, then looks them up in the store (the holder's checkpoint
has them) and sends only what is still unanswered (the holder stopped before sending).

A claim belongs to a batch (its first row key and size), not to a worker: Ray retries a
batch whose worker died on another worker, and that one takes the claims over. A worker
releases its claims before it waits for anyone else's, so two batches waiting on each
other's fingerprints never deadlock.

A claim is not held forever: a worker holding claims shows it is alive on every call it
makes while it works (waiting for slots or claims, or for a signal to stop the run: at
least every ``WATCH_S`` while a batch runs). Claims whose worker has not been seen for
``stale_s`` (the coordinator uses the request timeout plus the signal grace) are
released, so when a worker dies and Ray does not retry its batch, the batches waiting
on its fingerprints send them themselves instead of waiting forever.

Under ``--retry-failed`` a batch releases its claims with the requests that failed
again in this run (``Claims.failed``): no other batch, on any worker, sends them again
in the run, as the local engine sends each failed request once a run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence

from batchrun._types import Request, Result

log = logging.getLogger("batchrun")


class Claims:
    """Which batch is sending each fingerprint (plain state; the coordinator holds it)."""

    def __init__(
        self, stale_s: float = math.inf, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.holder: dict[str, str] = {}
        self.held: dict[str, set[str]] = {}
        self.stale_s = stale_s
        self.clock = clock
        self.worker_of: dict[str, str] = {}  # batch -> the worker answering it
        self.seen: dict[str, float] = {}  # worker -> when it last showed it is alive
        self.failed: set[str] = set()  # --retry-failed: requests that failed again this run

    def claim(self, batch: str, fingerprints: Iterable[str], worker: str = "") -> list[str]:
        """Claim the free ``fingerprints`` for ``batch``; return those another batch holds."""
        self._drop_stale()
        self.worker_of[batch] = worker  # a retried batch: its new worker
        self.alive(worker)
        others = []
        mine = self.held.setdefault(batch, set())
        for fingerprint in fingerprints:
            if self.holder.setdefault(fingerprint, batch) == batch:
                mine.add(fingerprint)
            else:
                others.append(fingerprint)
        return others

    def alive(self, worker: str) -> None:
        self.seen[worker] = self.clock()

    def release(self, batch: str, failed: Iterable[str] = ()) -> None:
        """``batch`` is done with its claims; ``failed``: its requests that failed again."""
        self.failed.update(failed)
        self.worker_of.pop(batch, None)
        for fingerprint in self.held.pop(batch, set()):
            if self.holder.get(fingerprint) == batch:
                del self.holder[fingerprint]

    def failed_again(self, fingerprints: Iterable[str]) -> list[str]:
        """Which of ``fingerprints`` a batch of this run sent and saw fail again."""
        return [fp for fp in fingerprints if fp in self.failed]

    def held_by_others(self, batch: str, fingerprints: Iterable[str]) -> list[str]:
        self._drop_stale()
        return [fp for fp in fingerprints if self.holder.get(fp, batch) != batch]

    def _drop_stale(self) -> None:
        """Release the claims of batches whose worker has not been seen for ``stale_s``."""
        now = self.clock()
        for batch, worker in list(self.worker_of.items()):
            if now - self.seen.get(worker, -math.inf) > self.stale_s:
                log.warning(
                    "batch %s: its worker was not seen for %.0f s; its %d requests are"
                    " sent by the batches waiting on them",
                    *(batch, self.stale_s, len(self.held.get(batch, ()))),
                    extra={"event": "worker_lost"},
                )
                self.release(batch)


def unique_fingerprints(items: Sequence[Request | Result]) -> list[str]:
    """The batch's request fingerprints, each once, in order."""
    return list(dict.fromkeys(item.fingerprint for item in items if isinstance(item, Request)))


def split_claimed(
    items: Sequence[Request | Result], others: Iterable[str]
) -> tuple[list[Request | Result], list[Request | Result]]:
    """(what to answer now, the requests another batch is sending: answer them later)."""
    elsewhere = set(others)
    now: list[Request | Result] = []
    later: list[Request | Result] = []
    for item in items:
        (later if isinstance(item, Request) and item.fingerprint in elsewhere else now).append(item)
    return now, later


__all__ = ["Claims", "split_claimed", "unique_fingerprints"]
