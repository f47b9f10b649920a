"""Pacing: rate-limit buckets, what the API's headers teach, the global 429 pause, backoff.

Three separate concerns, each small:

- ``RateInfo`` / ``parse_rate_info``: the ``x-ratelimit-*`` and ``retry-after`` headers.
- ``Pacer``: requests and tokens per minute, known from the job or learned from headers;
  each request admitted whole on both axes at once (a GCRA pace plus an exact log of the
  last minute's sends); a 429 without headers pauses briefly, once per burst of 429s.
- ``PauseGate``: one shared "resume at" deadline that every worker waits on after a 429.
- ``compute_backoff``: exponential backoff with full jitter, a pure function.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import anyio

from batchrun._errors import PermanentError
from batchrun._types import Request, Result

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

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str | None) -> float | None:
    """Seconds from an OpenAI-style duration ("1s", "6m0s", "20ms") or a plain number.

    >>> parse_duration("6m0.5s")
    360.5
    """
    if not text:
        return None
    text = text.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in parts)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RateInfo:
    """What one answer's headers say about the API's limits (None: not said)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    reset_s: float | None = None  # a plain x-ratelimit-reset: for whichever ran out
    retry_after_s: float | None = None

    @property
    def says_anything(self) -> bool:
        return any(value is not None for value in (self.limit_requests, self.limit_tokens))

    def exhausted_for_s(self) -> float | None:
        """How long until capacity returns, when the headers say none is left."""
        waits = []
        if self.remaining_requests is not None and self.remaining_requests <= 0:
            waits.append(self.reset_requests_s or self.reset_s)
        if self.remaining_tokens is not None and self.remaining_tokens <= 0:
            waits.append(self.reset_tokens_s or self.reset_s)
        known = [w for w in waits if w is not None]
        return max(known) if known else None

    def pause_s(self) -> float | None:
        """How long a 429 asks us to wait: retry-after-ms, Retry-After (or a vendor's),
        else the reset time of what ran out, else a plain ``x-ratelimit-reset``."""
        if self.retry_after_s is not None:
            return self.retry_after_s
        exhausted = self.exhausted_for_s()
        return exhausted if exhausted is not None else self.reset_s


NO_RATE_INFO = RateInfo()


_READ = (b"x-ratelimit-", b"retry-after", b"llm_provider-retry-after")
# Above this, a plain x-ratelimit-reset is a Unix time rather than seconds from now.
_EPOCH_AFTER = 1e9


def parse_rate_info(raw_headers: Iterable[tuple[bytes, bytes]]) -> RateInfo:
    """Read the ``x-ratelimit-*``, ``retry-after-ms``, ``Retry-After`` and LiteLLM's
    ``llm_provider-retry-after`` headers.

    Takes raw (name, value) pairs: one cheap pass, as this runs for every answer.
    """
    headers = {
        name.lower().decode("latin-1"): value.decode("latin-1")
        for name, value in raw_headers
        if name[:1] in b"xXrRlL" and name.lower().startswith(_READ)
    }
    if not headers:
        return NO_RATE_INFO
    return RateInfo(
        limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        reset_s=_reset(headers.get("x-ratelimit-reset")),
        retry_after_s=_retry_after(headers),
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    retry_ms = parse_duration(headers.get("retry-after-ms"))
    if retry_ms is not None:
        return retry_ms / 1000
    text = headers.get("retry-after")
    seconds = parse_duration(text)
    if seconds is None and text:
        seconds = _http_date_in_s(text)
    if seconds is None:
        seconds = parse_duration(headers.get("llm_provider-retry-after"))
    return seconds


def _http_date_in_s(text: str) -> float | None:
    """Seconds until an HTTP date (``Retry-After: Wed, 21 Oct 2015 07:28:00 GMT``)."""
    try:
        return max(parsedate_to_datetime(text).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, IndexError):
        return None


def _reset(text: str | None) -> float | None:
    """A plain ``x-ratelimit-reset``: seconds from now, a duration, or a Unix time."""
    seconds = parse_duration(text)
    if seconds is not None and seconds > _EPOCH_AFTER:
        return max(seconds - time.time(), 0.0)
    return seconds


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

    def pause_for(self, seconds: float) -> bool:
        """Close the gate for ``seconds`` from now; True when that extended the pause."""
        resume_at = self._now() + seconds
        if resume_at <= self._resume_at:
            return False
        self._resume_at = resume_at
        return True

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
        self.owed = 0.0  # counted by the API beyond (or, negative, short of) our estimates

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

    def hold_until(self, resume_at: float) -> None:
        """No burst after a pause: the first send is due at ``resume_at``, then the pace."""
        self.due = max(self.due, resume_at + BURST_S)

    def sent_in_window(self, now: float) -> int:
        self._expire(now)
        return len(self.log)

    def _expire(self, now: float) -> None:
        log = self.log
        while log and log[0][0] + SPAN_S <= now:
            self.used -= log.popleft()[1]


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

    def observe(self, info: RateInfo) -> None:
        """Learn (or re-learn) the limits from an answer's headers."""
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
            self._learn_counting(info)

    def _learn_counting(self, info: RateInfo) -> None:
        # The API reports far fewer tokens used than we reserved in its window: it counts
        # real usage, not prompt + max_completion_tokens, so pace by what it counts.
        limit, ours = info.limit_tokens, self._tokens.used
        if limit and info.remaining_tokens is not None and ours >= COUNTING_MIN * limit:
            self._counts_real = limit - info.remaining_tokens < ours / 2

    def reconcile(self, request: Request, result: Result) -> None:
        """The next request pays (or gets back) what the API counted beyond our estimate:
        the real prompt always, and the real completion when the API counts real usage."""
        if self._tokens.limit is None or result.prompt_tokens is None:
            return
        gap = result.prompt_tokens - request.est_prompt_tokens
        if self._counts_real and result.completion_tokens is not None:
            gap += result.completion_tokens - request.max_completion_tokens
        self._tokens.owed += gap

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
