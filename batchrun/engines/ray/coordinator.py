"""The Ray engine's coordinator: one small actor holding what a run's workers share.

The rules live in plain classes (``batchrun.engines.ray.shares``: ``GlobalPace``, ``Slots``,
``BudgetPool``; ``batchrun.engines.ray.claims``: ``Claims``), tested without Ray; this actor is
their one shared instance, plus the run's stop (``StopShare``), the 429 pause, the
workers' lives, counters and per-batch output counts, and the start-up marks. It is an
asyncio actor: its waits (slots, claims, the stop) return at the change.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from batchrun.engines.local import SIGNAL_GRACE_S
from batchrun.engines.ray.claims import Claims
from batchrun.engines.ray.shares import BudgetPool, GlobalPace, Slots
from batchrun.engines.ray.start import StartMarks, process_started
from batchrun.engines.ray.stop import StopShare
from batchrun.job.config import Limits

SEND_COUNTS = ("sent", "retries", "rate_limited", "cost_usd", "ok")  # per worker life
ROW_COUNTS = ("reused", "deduped", "finished", "failed")  # per batch


Counts = dict[str, Any]


@dataclass
class Totals:
    counters: dict[str, float]
    batches: list[dict[str, Any]]
    stopped: str | None
    fatal_message: str | None
    marks: dict[str, list[float]]


class Coordinator(StopShare):
    """What the workers of one run share (a Ray actor; its calls run one at a time)."""

    def __init__(
        self, planned: int, budget_left: float | None, limits: Limits | None = None
    ) -> None:
        self.planned = planned
        self.joined: dict[str, None] = {}
        self.lives = 0  # joins, restarts included: each life writes its own file
        self.resume_at = 0.0  # wall clock: workers may sit on different hosts
        rpm, tpm = (limits.requests_per_minute, limits.tokens_per_minute) if limits else (None,) * 2
        self.pace = GlobalPace(rpm, tpm)
        self.slots = Slots(limits.concurrency if limits else planned)
        self.money = None if budget_left is None else BudgetPool(budget_left)
        self.stopped: str | None = None
        self.fatal_message: str | None = None
        self.counters: dict[str, dict[str, float]] = {}  # each worker life's sends
        self.rows: dict[str, dict[str, float]] = {}  # each batch's rows
        self.batches: dict[str, dict[str, Any]] = {}
        self.claims = Claims(limits.timeout_s + SIGNAL_GRACE_S if limits else math.inf)
        self.marks = StartMarks()
        self.marks.mark("coordinator started", process_started())
        self.marks.mark("coordinator ready")

    def mark(self, step: str, wall: float | None) -> None:
        """A worker's step of the start (``StartMarks``)."""
        if wall is not None:
            self.marks.mark(step, wall)

    def join(self, worker: str) -> int:
        """A worker starts (its life's number); a worker Ray restarted after its node was
        lost joins again, and what its last life held is freed: its slots, its lease."""
        if worker in self.joined:
            self.slots.give_back(worker)
            if self.money is not None:
                self.money.give_back(worker, 0.0, closed=True)  # its unspent lease is lost
        self.joined[worker] = None
        self.lives += 1
        return self.lives - 1

    def state(self) -> tuple[int, str | None]:
        """(how many workers split a pace guessed from a bare 429, which no header states;
        why the run stopped or None). Stated limits are global (``GlobalPace``)."""
        return max(self.planned, len(self.joined)), self.stopped

    def pause_until(self, wall: float) -> None:
        self.resume_at = max(self.resume_at, wall)

    def resume_time(self) -> float:
        return self.resume_at

    def admit(self, tokens: list[int], learned: tuple[int | None, int | None]) -> list[float]:
        return self.pace.admit(tokens, learned)

    async def take_slots(
        self, worker: str, want: int, wait_s: float = 0.0
    ) -> tuple[int, str | None]:
        """(slots leased for one batch, why the run stopped or None); waits up to
        ``wait_s`` for slots to be given back while none are to be had."""
        self.claims.alive(worker)  # waiting for slots, its claims still hold
        if self.stop_deadline is not None:
            return 0, self.stopped  # a signal: no batch starts sending
        granted = self.slots.take(worker, want)
        if not granted:
            await self.changed(wait_s)
            granted = 0 if self.stop_deadline is not None else self.slots.take(worker, want)
        return granted, self.stopped

    def give_back_slots(self, worker: str) -> None:
        self.slots.give_back(worker)
        self.wake()

    def lease(
        self, worker: str, want: float, need: float, returned: float, closed: bool
    ) -> float | None:
        assert self.money is not None
        return self.money.lease(worker, want, need, returned, closed)

    def give_back_money(self, worker: str, amount: float, closed: bool) -> None:
        if self.money is not None:
            self.money.give_back(worker, amount, closed)

    def short(self, worker: str) -> bool:
        return self.money is not None and self.money.short(worker)

    def claim(self, batch: str, fingerprints: list[str], worker: str) -> list[str]:
        return self.claims.claim(batch, fingerprints, worker)

    def release(self, batch: str, failed: list[str] | None = None) -> None:
        self.claims.release(batch, failed or ())
        self.wake()

    def failed_again(self, fingerprints: list[str]) -> list[str]:
        return self.claims.failed_again(fingerprints)

    async def held(
        self, batch: str, fingerprints: list[str], worker: str, wait_s: float = 0.0
    ) -> tuple[list[str], str | None]:
        """(which of ``fingerprints`` other batches hold, why the run stopped or None);
        waits up to ``wait_s`` for a release while some are held."""
        self.claims.alive(worker)
        if self.claims.held_by_others(batch, fingerprints) and self.stopped is None:
            await self.changed(wait_s)
        return self.claims.held_by_others(batch, fingerprints), self.stopped

    def stop(self, reason: str, message: str | None = None) -> None:
        if self.stopped is None or reason == "fatal":
            self.stopped, self.fatal_message = reason, message
        self.wake()

    def report(self, life: str, counters: Counts, batch: str, rows: Counts, stats: Counts) -> None:
        # Keyed, not added: every worker life's sends count, and a batch's rows count
        # once, as it first ended. Ray runs a finished batch again to rebuild its output
        # lost with a node; its rows then come "from the checkpoint", this run's answers.
        self.counters[life] = counters
        self.rows.setdefault(batch, rows)
        self.batches[batch] = stats

    def totals(self) -> Totals:
        summed: Counter[str] = Counter()
        for counters in [*self.counters.values(), *self.rows.values()]:
            summed.update(counters)
        return Totals(
            dict(summed),
            list(self.batches.values()),
            self.stopped,
            self.fatal_message,
            self.marks.at,
        )


__all__ = ["ROW_COUNTS", "SEND_COUNTS", "Coordinator", "Counts", "Totals"]
