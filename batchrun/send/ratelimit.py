"""Pacing: rate-limit buckets, the global 429 pause, backoff.

Three separate concerns, each small (what the headers say is ``send.headers``):

- ``Pacer``: requests and tokens per minute, known from the job or learned from headers;
  each request admitted whole on both axes at once (a GCRA pace plus an exact log of the
  last minute's sends); a 429 without headers pauses briefly, once per burst of 429s.
- ``PauseGate``: one shared "resume at" deadline that every worker waits on after a 429.
- ``compute_backoff``: exponential backoff with full jitter, a pure function.
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from batchrun._errors import PermanentError
from batchrun._types import Request, Result
from batchrun.send.headers import RateInfo

# The API's window is 60 s; ours is longer by a margin, so a send that reaches the API a
# little late (network jitter) still cannot land in the same API window as one 60 s older.
WINDOW_S = 60.0
MARGIN_S = 0.5
SPAN_S = WINDOW_S + MARGIN_S
# After a quiet spell, up to half a second's worth of pace may go at once.
BURST_S = 0.5
# A 429 that says nothing pauses all sends PAUSE_S, doubling while 429s keep coming.
PAUSE_S = 1.0
MAX_PAUSE_S = 2.0
# With no stated limit: the pace that drew a 429, a little lower, is the new estimate;
# the pace restarts at CUT_FACTOR of it and climbs back over RECOVER_S.
ESTIMATE_RATIO = 0.9
CUT_FACTOR = 0.5
RECOVER_S = 30.0
RETUNE_STEP = 0.01
# Below this share of the limit in our window, the API's token count tells us nothing.
COUNTING_MIN = 0.1
PAUSE_CAP_S = 300.0
"""No pause is longer: a server that asks for more is asked again after this."""


def compute_backoff(attempt: int, rng: random.Random, *, base_s: float, cap_s: float) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based).

    >>> 0 <= compute_backoff(3, random.Random(0), base_s=0.5, cap_s=20) <= 2.0
    True
    """
    return rng.uniform(0.0, min(cap_s, base_s * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry waits: ``compute_backoff`` with these bounds (tests pass tiny ones)."""

    base_s: float = 0.5
    cap_s: float = 20.0


class PauseGate:
    """One global "resume at" time: a 429 closes the gate for every worker at once.

    Times are ``time.monotonic()``, the clock of asyncio's loop, without anyio's per-call
    backend lookup (this runs several times per request); a test on a virtual clock
    passes ``clock=anyio.current_time``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._resume_at = -math.inf
        self._now = clock

    @property
    def is_open(self) -> bool:
        return self._now() >= self._resume_at

    def pause_for(self, seconds: float) -> float:
        """Close the gate for ``seconds`` from now (at most ``PAUSE_CAP_S``; a wait that
        is not a number above 0 is none). Returns by how much that lengthened the pause
        (0.0: not at all)."""
        if not seconds > 0:  # also NaN
            return 0.0
        now = self._now()
        resume_at = now + min(seconds, PAUSE_CAP_S)
        if resume_at <= self._resume_at:
            return 0.0
        before, self._resume_at = max(self._resume_at, now), resume_at
        return resume_at - before

    async def wait(self) -> None:
        # Sleep to the deadline; loop only when another 429 moved it meanwhile.
        while (delay := self._resume_at - self._now()) > 0:
            await anyio.sleep(delay)


@dataclass(slots=True)
class LearnedLimits:
    """Limits the API's headers stated; kept by a dispatcher across runs."""

    rpm: int | None = None
    tpm: int | None = None


class Axis:
    """One limited quantity (requests or tokens): its limit, its pace and its log of sends.

    A request is admitted whole, by two rules at once:

    - a GCRA ("debt") pace: each admission moves ``due`` on by ``amount * interval``, and
      the next waits until ``due - BURST_S``, so sends are spread evenly whatever their size;
    - an exact log of the last ``SPAN_S`` of sends: the hard cap, so no window ever holds
      more than the limit, by construction.
    """

    __slots__ = (
        "configured", "due", "estimate", "factor", "interval", "learned", "limit", "log",
        "owed", "share", "used",
    )  # fmt: skip

    def __init__(self, configured: int | None, learned: int | None, share: float) -> None:
        self.configured = configured
        self.learned = learned  # stated by the API's headers
        self.estimate: int | None = None  # guessed from a 429 when nothing states a limit
        self.share = share  # this process's part of a limit shared with other workers
        self.factor = 1.0
        self.limit: float | None = None
        self.interval = 0.0  # seconds of pace per unit
        self.due = -math.inf
        self.log: deque[tuple[float, float]] = deque()
        self.used = 0.0  # the sum of the log
        self.owed = 0.0  # counted by the API beyond our estimates: the next sends pay it

    @property
    def stated(self) -> int | None:
        """The whole limit, as configured or stated by the API (the smaller)."""
        known = [v for v in (self.configured, self.learned) if v]
        return min(known) if known else None

    def retune(self, factor: float, now: float) -> None:
        """Pace at ``factor`` of the limit; debt already run up is re-priced at once."""
        whole = self.stated or self.estimate
        self.factor = factor
        self.limit = whole * self.share if whole else None
        old, self.interval = self.interval, SPAN_S / (self.limit * factor) if self.limit else 0.0
        if old and self.interval and self.due > now:
            self.due = now + (self.due - now) * self.interval / old

    def cost(self, amount: float) -> float:
        charged = amount + self.owed
        return 0.0 if charged < 0 else min(charged, max(self.limit or charged, amount))

    def ready_at(self, amount: float, now: float) -> float:
        """When this axis admits a request of ``amount`` (``now`` at the earliest)."""
        limit = self.limit
        if limit is None:
            return now
        self._expire(now)
        at = self.due - BURST_S
        # A request above this process's share of the limit goes alone into a window.
        excess = self.used + amount - max(limit, amount)
        if excess > 0:
            for stamp, size in self.log:
                excess -= size
                if excess <= 1e-9:
                    at = max(at, stamp + SPAN_S)
                    break
        return at if at > now else now

    def admit(self, amount: float, now: float) -> None:
        cost = self.cost(amount)
        self.owed += amount - cost
        self._expire(now)
        self.log.append((now, cost))
        self.used += cost
        if self.interval:
            self.due = max(self.due, now) + cost * self.interval

    def give_back(self, stamp: float, amount: float, now: float) -> float:
        """Unused room of the send at ``stamp``: freed in the log while that send is in
        it (so only in its own window, never later), and taken off the pace. Returns
        how much was freed."""
        self._expire(now)
        log, given = self.log, 0.0
        i = bisect_left(log, stamp, key=_stamp)
        while given < amount and i < len(log) and log[i][0] == stamp:
            size = log[i][1]
            taken = min(size, amount - given)
            log[i] = (stamp, size - taken)
            given += taken
            i += 1
        self.used -= given
        if self.interval and given:
            self.due = max(self.due - given * self.interval, min(self.due, now))
        return given

    def hold_until(self, resume_at: float) -> None:
        """No burst after a pause: the first send is due at ``resume_at``, then the pace."""
        self.due = max(self.due, resume_at + BURST_S)

    def sent_between(self, start: float, end: float) -> float:
        """The sum of the log's sends after ``start`` and up to ``end``."""
        return sum(size for stamp, size in self.log if start < stamp <= end)

    def sent_in_window(self, now: float) -> int:
        self._expire(now)
        return round(self.used)  # on the requests axis: 1 a send, 0 one withdrawn

    def _expire(self, now: float) -> None:
        log = self.log
        while log and log[0][0] + SPAN_S <= now:
            self.used -= log.popleft()[1]


def _stamp(entry: tuple[float, float]) -> float:
    return entry[0]


class Pacer:
    """Admits each request whole under requests and tokens per minute, known or learned.

    For any mix of sizes and any number of workers, no ``SPAN_S`` window (60 s plus a
    margin for arrival jitter) holds more than a limit, and the steady pace is
    ``60 / SPAN_S`` of the binding limit. Waiters queue in one FIFO line; only its head
    sleeps, and it wakes early when the limits or the pace change.
    """

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        learned: LearnedLimits | None = None,
        *,
        share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``share`` (0..1] is this pacer's part of the limits when several processes
        split one job's limits (the Ray engine); configured and learned limits alike.
        ``clock`` must be the event loop's clock (a virtual one in tests)."""
        self.learned = learned if learned is not None else LearnedLimits()
        self._clock = clock
        self._requests = Axis(rpm, self.learned.rpm, share)
        self._tokens = Axis(tpm, self.learned.tpm, share)
        self._started = clock()
        self._factor = 1.0  # the estimated request pace in use, after a cut
        self._floor = 1.0
        self._ramping = False
        self._resume_at = -math.inf  # a 429 that said nothing pauses sending until then
        self._cut_at = -math.inf  # when that last happened
        self._streak = 0  # such 429 events since the last success
        self._counts_real = False  # the API counts real tokens, not our reservations
        # Unused completion tokens of answered sends, (sent at, tokens), given back if the
        # API turns out to count real tokens while those sends are still in the window.
        self._unclaimed: deque[tuple[float, float]] = deque()
        self._waiting = 0
        self._lock: anyio.Lock | None = None
        self._nap: anyio.CancelScope | None = None
        self._retune(self._started)

    @property
    def rpm_in_use(self) -> float | None:
        axis = self._requests
        return None if axis.limit is None else axis.limit * axis.factor

    async def acquire(self, tokens: int) -> float:
        """Wait for room for one request of ``tokens`` on both axes; returns the send time.

        Raises ``PermanentError("too_large_for_limit")`` when no window can ever hold it.
        """
        now = self._clock()
        if not self._waiting and self._ready_at(tokens, now) <= now:
            self._admit(tokens, now)
            return now
        if self._lock is None:
            self._lock = anyio.Lock(fast_acquire=True)
        self._waiting += 1
        try:
            async with self._lock:
                return await self._wait_for_room(tokens)
        finally:
            self._waiting -= 1

    async def _wait_for_room(self, tokens: int) -> float:
        while True:
            now = self._clock()
            at = self._ready_at(tokens, now)
            if at <= now:
                self._admit(tokens, now)
                return now
            if at == math.inf:
                raise PermanentError(
                    "too_large_for_limit",
                    f"the request counts {tokens} tokens against a limit of "
                    f"{self._tokens.stated} tokens per minute: it can never be sent",
                )
            try:
                with anyio.CancelScope() as self._nap:
                    await anyio.sleep(at - now)
            finally:
                self._nap = None

    def _ready_at(self, tokens: int, now: float) -> float:
        if self._ramping:
            self._ramp(now)
        at = max(self._resume_at, self._requests.ready_at(1, now))
        axis = self._tokens
        if axis.limit is None:
            return at
        if tokens > (axis.stated or math.inf):
            return math.inf
        return max(at, axis.ready_at(axis.cost(tokens), now))

    def _admit(self, tokens: int, now: float) -> None:
        self._requests.admit(1, now)
        self._tokens.admit(tokens, now)

    def _retune(self, now: float) -> None:
        requests = self._requests
        requests.retune(1.0 if requests.stated else self._factor, now)
        self._tokens.retune(1.0, now)

    def _wake(self) -> None:
        # The head of the line re-computes its wait at the new pace.
        if self._nap is not None:
            self._nap.cancel()

    def observe(self, info: RateInfo, sent_at: float = math.inf) -> None:
        """Learn (or re-learn) the limits from the headers of the answer to the request
        admitted at ``sent_at``."""
        requests, tokens = self._requests, self._tokens
        changed = False
        if info.limit_requests and info.limit_requests != requests.learned:
            self.learned.rpm = requests.learned = info.limit_requests
            changed = True
        if info.limit_tokens and info.limit_tokens != tokens.learned:
            self.learned.tpm = tokens.learned = info.limit_tokens
            changed = True
        if changed:
            self._retune(self._clock())
            self._wake()
        if info.remaining_tokens is not None and not self._counts_real:
            self._learn_counting(info, sent_at)

    @property
    def counts_real(self) -> bool:
        """The API has shown it counts real tokens, not our reservations."""
        return self._counts_real

    def _learn_counting(self, info: RateInfo, sent_at: float) -> None:
        # The API reports far fewer tokens used than we reserved in its window: it counts
        # real usage, not prompt + max_completion_tokens, so pace by what it counts, and
        # re-price the sends answered before we knew (those still in the window).
        # Compared only with sends it has surely counted: ours up to this one, and inside
        # its 60 s window (our log is longer by MARGIN_S, and holds later sends).
        limit, axis, now = info.limit_tokens, self._tokens, self._clock()
        if not limit or info.remaining_tokens is None:
            return
        counted = limit - info.remaining_tokens
        if counted < axis.used / 2:  # else surely not (and the sum below is not needed)
            ours = axis.sent_between(now - WINDOW_S + MARGIN_S, sent_at)
            if ours >= COUNTING_MIN * limit:
                self._counts_real = counted < ours / 2
        if self._counts_real:
            while self._unclaimed:
                self._tokens.give_back(*self._unclaimed.popleft(), now)
            self._wake()

    def withdraw(self, tokens: int, sent_at: float) -> None:
        """The request of ``tokens`` admitted at ``sent_at`` was not sent (a pause or an
        early-stop hold began first): its room and pace go back. The log must hold only
        what reached the API: ``_learn_counting`` compares it with what the API counted."""
        now = self._clock()
        self._requests.give_back(sent_at, 1, now)
        self._tokens.give_back(sent_at, tokens, now)
        self._wake()

    def reconcile(self, request: Request, result: Result, sent_at: float) -> None:
        """What the API counted for the request admitted at ``sent_at``, against what it
        reserved: the real prompt always, the real completion when the API counts real
        usage. Room it did not use is given back in its own window only; tokens beyond
        the estimate are paid by the next request."""
        if result.prompt_tokens is None:
            return
        axis, now = self._tokens, self._clock()
        unused = request.est_prompt_tokens - result.prompt_tokens
        if result.completion_tokens is not None:
            completion = request.max_completion_tokens - result.completion_tokens
            if self._counts_real:
                unused += completion
            elif completion > 0:
                self._claim_later(sent_at, completion, now)
        if unused > 0:
            if axis.give_back(sent_at, unused, now) and axis.limit is not None:
                self._wake()
        elif unused < 0 and axis.limit is not None:
            axis.owed -= unused

    def _claim_later(self, sent_at: float, tokens: float, now: float) -> None:
        unclaimed = self._unclaimed
        while unclaimed and unclaimed[0][0] + SPAN_S <= now:
            unclaimed.popleft()
        unclaimed.append((sent_at, tokens))

    def throttled(self, sent_at: float) -> None:
        """A 429 that said nothing: pause every send briefly, once per burst of 429s.

        After the pause the pace is the stated limit again at once (our log counts refused
        sends too, so such a 429 means a window we do not model, e.g. a calendar minute).
        With no stated limit, the request pace drops to half of a bit below the pace that
        drew the 429, and climbs back to that within ``RECOVER_S``.
        """
        now = self._clock()
        if sent_at < self._cut_at:
            return  # sent before the last pause: that pause already answered it
        self._streak += 1
        self._cut_at = now
        self._resume_at = now + min(PAUSE_S * 2 ** (self._streak - 1), MAX_PAUSE_S)
        if self._streak == 1 and not self._requests.stated:
            self._estimate(now)
        self._retune(now)
        for axis in (self._requests, self._tokens):
            axis.hold_until(self._resume_at)
        self._wake()

    def succeeded(self, sent_at: float) -> None:
        """A request sent after the last pause got through: the next 429 starts afresh."""
        if sent_at >= self._cut_at:
            self._streak = 0

    def _estimate(self, now: float) -> None:
        axis = self._requests
        elapsed = min(max(now - self._started, 1.0), SPAN_S)
        pace = axis.sent_in_window(now) * 60 / elapsed / axis.share
        axis.estimate = max(2, math.ceil(ESTIMATE_RATIO * pace))
        self._factor = self._floor = CUT_FACTOR
        self._ramping = True

    def _ramp(self, now: float) -> None:
        # Time-based recovery: from the cut back to the estimate over RECOVER_S.
        factor = self._floor + (1 - self._floor) * max(now - self._resume_at, 0) / RECOVER_S
        if factor >= 1.0:
            factor, self._ramping = 1.0, False
        if factor - self._factor >= RETUNE_STEP or not self._ramping:
            self._factor = factor
            self._retune(now)
