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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from batchrun._types import Request, Result


class Claims:
    """Which batch is sending each fingerprint (plain state; the coordinator holds it)."""

    def __init__(self) -> None:
        self.holder: dict[str, str] = {}
        self.held: dict[str, set[str]] = {}

    def claim(self, batch: str, fingerprints: Iterable[str]) -> list[str]:
        """Claim the free ``fingerprints`` for ``batch``; return those another batch holds."""
        others = []
        mine = self.held.setdefault(batch, set())
        for fingerprint in fingerprints:
            if self.holder.setdefault(fingerprint, batch) == batch:
                mine.add(fingerprint)
            else:
                others.append(fingerprint)
        return others

    def release(self, batch: str) -> None:
        for fingerprint in self.held.pop(batch, set()):
            if self.holder.get(fingerprint) == batch:
                del self.holder[fingerprint]

    def held_by_others(self, batch: str, fingerprints: Iterable[str]) -> list[str]:
        return [fp for fp in fingerprints if self.holder.get(fp, batch) != batch]


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
