"""The job's limits and budget shared by several processes (the Ray engine's workers).

One coordinator (a Ray actor in ``batchrun.engines.ray.engine``; plain classes here) holds what the
workers share, and hands it out only to workers that have work, so every limit holds
for the job as a whole whatever the number of workers, and an idle worker takes none:

- ``GlobalPace``: every send of every worker is admitted on one log of the job's
  ``requests_per_minute`` and ``tokens_per_minute``, configured or stated by the API's
  headers to any worker (the ``Pacer``'s rules: a GCRA pace
  plus an exact log of the last ``SPAN_S``). A worker asks for the sends it has waiting
  (one call for all of them, ``SharedPacer``) and gets, for each, how long to wait before
  sending. A send may reach the API up to ``MARGIN_S`` later than admitted and no window
  holds more than the limit; a worker whose answer took longer asks again.
- ``Slots``: ``concurrency`` is leased to workers batch by batch; the slots of all
  workers together never exceed it, so a worker may get none and waits for a lease.
  While several want slots, each gets at most an even part.
- ``BudgetPool``: ``max_cost_usd`` (less earlier spend) is leased in slices
  (``LeasedBudget``). While a worker waits for money, the others give back what they
  do not need, and the job stops on money only when the remainder cannot cover one
  request and no worker holds a lease (so nothing is in flight anywhere).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from batchrun._errors import PermanentError
from batchrun._types import Request
from batchrun.job.config import Price
from batchrun.send.budget import Budget
from batchrun.send.headers import RateInfo
from batchrun.send.ratelimit import MARGIN_S, Axis, LearnedLimits, Pacer

Call = Callable[..., Awaitable[Any]]
"""``await call("method", *args)``: a coordinator method, over Ray or directly in tests."""
Stated = tuple[int | None, int | None]
"""Requests and tokens per minute an API's headers stated (None: not stated)."""
LATE_S = 0.8 * MARGIN_S
"""An admission whose answer took longer than this is asked for again (it may be late)."""
MAX_REASKS = 3
LEASE_REQUESTS = 64
"""Budget is leased in slices worth this many worst-case requests."""
POLL_S = 0.05
"""How often a worker waiting for slots or money asks again."""
SHORT_REFRESH_S = 0.25
"""Longest a worker goes without asking whether another waits for money."""


class GlobalPace:
    """The job's configured requests and tokens per minute, for all workers at once."""

    def __init__(
        self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._requests = Axis(rpm, None, 1.0)
        self._tokens = Axis(tpm, None, 1.0)
        now = clock()
        self._requests.retune(1.0, now)
        self._tokens.retune(1.0, now)
        self._last = -math.inf  # admissions are in time order: the log stays sorted

    def admit(self, tokens: list[int], learned: Stated = (None, None)) -> list[float]:
        """For each request (its estimated tokens), seconds from now until it may be sent;
        ``inf`` for one that no window can ever hold. ``learned``: the RPM and TPM a
        worker's answers stated (its headers), held from now on for every worker."""
        now = self._clock()
        self.learn(*learned, now=now)
        return [self._admit_one(amount, now) for amount in tokens]

    def learn(self, rpm: int | None, tpm: int | None, *, now: float) -> None:
        for axis, value in ((self._requests, rpm), (self._tokens, tpm)):
            if value and value != axis.learned:
                axis.learned = value
                axis.retune(1.0, now)

    def _admit_one(self, amount: int, now: float) -> float:
        requests, tokens = self._requests, self._tokens
        if tokens.stated is not None and amount > tokens.stated:
            return math.inf
        start = max(now, self._last)
        at = max(requests.ready_at(1, start), tokens.ready_at(tokens.cost(amount), start))
        requests.admit(1, at)
        tokens.admit(amount, at)
        self._last = at
        return at - now


class Slots:
    """``concurrency`` leased to workers; a worker holds its lease for one batch."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held: dict[str, int] = {}
        self.waiting: dict[str, None] = {}  # in the order they first asked

    def take(self, worker: str, want: int) -> int:
        """Up to ``want`` slots (0: none free, ask again later)."""
        self.give_back(worker)
        if self.waiting and next(iter(self.waiting)) != worker:
            self.waiting.setdefault(worker)  # first come, first served
            return 0
        free = self.total - sum(self.held.values())
        active = len(self.held) + len(self.waiting.keys() | {worker})
        granted = min(want, free, math.ceil(self.total / active))
        if granted <= 0:
            self.waiting.setdefault(worker)
            return 0
        self.waiting.pop(worker, None)
        self.held[worker] = granted
        return granted

    def give_back(self, worker: str) -> None:
        self.held.pop(worker, None)


class BudgetPool:
    """The job's budget left, leased to workers in slices."""

    def __init__(self, left: float) -> None:
        self.left = left
        self.open: set[str] = set()  # workers holding a lease (maybe with money in flight)
        self.waiting: set[str] = set()

    def lease(
        self, worker: str, want: float, need: float, returned: float = 0.0, closed: bool = False
    ) -> float | None:
        """Money for a worker short by ``need``: ``want`` when all is well, only ``need``
        while another worker waits, 0.0 (wait and ask again) or None (stop on money).

        ``returned`` is money the worker gives back first; ``closed``: it holds no lease
        and has nothing in flight."""
        self.give_back(worker, returned, closed)
        if self.left >= need:
            self.waiting.discard(worker)
            grant = need if self.waiting else min(max(want, need), self.left)
            self.left -= grant
            self.open.add(worker)
            return grant
        self.waiting.add(worker)
        if closed and not self.open - {worker}:
            return None  # nothing can come back: what is left cannot pay one request
        return 0.0

    def give_back(self, worker: str, amount: float, closed: bool = False) -> None:
        self.left += amount
        if closed:
            self.open.discard(worker)

    def short(self, worker: str) -> bool:
        """True while another worker waits for money: this one keeps no slack."""
        return bool(self.waiting - {worker})


class SharedPacer(Pacer):
    """A worker's pacer: the job's configured limits, and those the API's headers state,
    admitted by the coordinator's ``GlobalPace`` for all of the worker's waiting sends in
    one call (the limits learned ride along on it); a 429's pause and a limit guessed
    from a 429 are paced here, at the worker's share (as ``Pacer``)."""

    def __init__(
        self,
        call: Call,
        rpm: int | None,
        tpm: int | None,
        learned: LearnedLimits | None = None,
        *,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The base paces no stated limit: the coordinator holds them all.
        super().__init__(None, None, LearnedLimits(), share=share, clock=clock)
        self.learned = learned if learned is not None else LearnedLimits()
        self._call = call
        self._rpm, self._tpm = rpm, tpm
        self._queue: list[_Ticket] = []
        self._answered: anyio.Event | None = None

    def observe(self, info: RateInfo, sent_at: float = math.inf) -> None:
        """Limits stated by an answer's headers go to the coordinator with the next
        admission: like configured ones, they then hold for all workers at once."""
        if info.limit_requests:
            self.learned.rpm = info.limit_requests
        if info.limit_tokens:
            self.learned.tpm = info.limit_tokens

    async def acquire(self, tokens: int) -> float:
        await super().acquire(tokens)  # a bare 429's pause, or a limit guessed from it
        if not (self._rpm or self._tpm or self.learned.rpm or self.learned.tpm):
            return self._clock()  # no limit known yet: nothing to ask
        delay = await self._admission(tokens)
        if delay == math.inf:
            tpm = min(v for v in (self._tpm, self.learned.tpm) if v)
            raise PermanentError(
                "too_large_for_limit",
                f"the request counts {tokens} tokens against a limit of"
                f" {tpm} tokens per minute: it can never be sent",
            )
        if delay > 0:
            await anyio.sleep(delay)
        return self._clock()

    async def _admission(self, tokens: int) -> float:
        ticket = _Ticket(tokens)
        self._queue.append(ticket)
        try:
            while ticket.delay is None:
                if self._answered is not None:
                    await self._answered.wait()
                else:
                    await self._ask()
        except BaseException:
            if ticket in self._queue:
                self._queue.remove(ticket)
            raise
        return ticket.delay

    async def _ask(self) -> None:
        """One call for every waiting send; the others wait for its answer."""
        tickets, self._queue = self._queue, []
        self._answered = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):  # the others' answers ride on it
                delays = await self._timely([t.tokens for t in tickets])
            for ticket, delay in zip(tickets, delays, strict=True):
                ticket.delay = delay
        except BaseException:
            self._queue[:0] = tickets
            raise
        finally:
            answered, self._answered = self._answered, None
            answered.set()

    async def _timely(self, tokens: list[int]) -> list[float]:
        # Waits count from the answer, so a slow answer makes sends late, never early.
        for _ in range(MAX_REASKS):
            asked = self._clock()
            learned = (self.learned.rpm, self.learned.tpm)
            delays: list[float] = await self._call("admit", tokens, learned)
            if self._clock() - asked <= LATE_S:
                break
        return delays


class _Ticket:
    __slots__ = ("delay", "tokens")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.delay: float | None = None


class LeasedBudget(Budget):
    """A worker's part of the job's budget, leased from the coordinator's ``BudgetPool``."""

    def __init__(
        self, price: Price, call: Call, worker: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(0.0, price)
        self._call = call
        self._worker = worker
        self._clock = clock
        self._checked = -math.inf
        # One call to the pool at a time: "closed" must see every grant already made.
        self._calling: anyio.Lock | None = None

    @property
    def unused(self) -> float:
        return max(self.max_cost_usd - self.spent_usd - self.reserved_usd, 0.0)

    async def reserve(self, request: Request) -> float | None:
        """Reserve from the lease; lease more when short, and wait (for this worker's
        sends to settle, or another's lease to come back) while none is to be had."""
        await self._keep_no_slack()
        while (amount := self.try_reserve(request)) is None:
            async with self._lock():
                if (amount := self.try_reserve(request)) is not None:
                    return amount  # another of this worker's sends leased meanwhile
                granted = await self._lease(self.worst_case(request))
            if granted is None:
                return None
            if not granted:
                await self._wait_a_little()
        return amount

    async def _lease(self, need: float) -> float | None:
        closed = self.in_flight == 0
        returned = self.unused if closed else 0.0
        self.max_cost_usd -= returned
        # A hair over the shortfall, so float rounding cannot leave it just short.
        short = (need - self.unused) * (1 + 1e-9)
        granted: float | None = await self._call(
            "lease", self._worker, need * LEASE_REQUESTS, short, returned, closed
        )
        self.max_cost_usd += granted or 0.0
        return granted

    def _lock(self) -> anyio.Lock:
        if self._calling is None:
            self._calling = anyio.Lock()
        return self._calling

    async def give_back(self) -> None:
        """At the end of a batch (nothing in flight): the lease goes back whole."""
        async with self._lock():
            returned = self.unused
            self.max_cost_usd -= returned
            await self._call("give_back_money", self._worker, returned, self.in_flight == 0)
        self._calling = None  # the next batch runs in a new event loop

    async def _keep_no_slack(self) -> None:
        """While another worker waits for money, give back what is not reserved."""
        if self._clock() - self._checked < SHORT_REFRESH_S:
            return
        self._checked = self._clock()
        if self.unused and await self._call("short", self._worker):
            async with self._lock():
                returned = self.unused
                self.max_cost_usd -= returned
                await self._call("give_back_money", self._worker, returned, False)

    async def _wait_a_little(self) -> None:
        if self._settled is None:
            self._settled = anyio.Event()
        with anyio.move_on_after(POLL_S):
            await self._settled.wait()  # a send of ours settled, or another may have
