"""Pacing: rate-limit buckets, what the API's headers teach, the global 429 pause, backoff.

Three separate concerns, each small:

- ``RateInfo`` / ``parse_rate_info``: the ``x-ratelimit-*`` and ``retry-after`` headers.
- ``Pacer``: requests- and tokens-per-minute buckets (aiolimiter), known from the job
  or learned from headers, halved on a 429 without headers and grown back additively.
- ``PauseGate``: one shared "resume at" deadline that every worker waits on after a 429.
- ``compute_backoff``: exponential backoff with full jitter, a pure function.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import anyio
from aiolimiter import AsyncLimiter

# A bucket holds half a second of the rate: bursts stay small, and the rate is cut so
# that the burst plus 60 s of steady flow (plus arrival jitter) still fits the limit.
BURST_S = 0.5
JITTER_S = 0.5
# Below this change of rate a bucket is not rebuilt (additive increase is gradual).
RETUNE_RATIO = 0.05
MIN_FACTOR = 1 / 64

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
    retry_after_s: float | None = None

    @property
    def says_anything(self) -> bool:
        return any(value is not None for value in (self.limit_requests, self.limit_tokens))

    def exhausted_for_s(self) -> float | None:
        """How long until capacity returns, when the headers say none is left."""
        waits = []
        if self.remaining_requests is not None and self.remaining_requests <= 0:
            waits.append(self.reset_requests_s)
        if self.remaining_tokens is not None and self.remaining_tokens <= 0:
            waits.append(self.reset_tokens_s)
        known = [w for w in waits if w is not None]
        return max(known) if known else None

    def pause_s(self) -> float | None:
        """How long a 429 asks us to wait: retry-after-ms, Retry-After, else the reset time."""
        if self.retry_after_s is not None:
            return self.retry_after_s
        return self.exhausted_for_s()


NO_RATE_INFO = RateInfo()


def parse_rate_info(raw_headers: Iterable[tuple[bytes, bytes]]) -> RateInfo:
    """Read the ``x-ratelimit-*``, ``retry-after-ms`` and ``Retry-After`` headers.

    Takes raw (name, value) pairs: one cheap pass, as this runs for every answer.
    """
    headers = {
        name.lower().decode("latin-1"): value.decode("latin-1")
        for name, value in raw_headers
        if name[:1] in b"xXrR" and name.lower().startswith((b"x-ratelimit-", b"retry-after"))
    }
    if not headers:
        return NO_RATE_INFO
    retry_ms = parse_duration(headers.get("retry-after-ms"))
    return RateInfo(
        limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        retry_after_s=retry_ms / 1000 if retry_ms is not None else _retry_after(headers),
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    # Retry-After may also be an HTTP date; an API answering 429 uses seconds.
    return parse_duration(headers.get("retry-after"))


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


class _Bucket:
    """An aiolimiter bucket that never lets a rolling 60 s window exceed ``per_minute``."""

    def __init__(self, per_minute: float, *, primed: bool = False) -> None:
        self.per_minute = per_minute
        capacity = max(1.0, per_minute * BURST_S / (60 + BURST_S + JITTER_S))
        per_s = max(per_minute - capacity, 0.9) / (60 + JITTER_S)
        self.limiter = AsyncLimiter(capacity, capacity / per_s)
        # A bucket replacing another starts full, so a retune never adds a burst.
        self._unprimed = primed

    async def take(self, amount: float) -> None:
        limiter = self.limiter
        if self._unprimed:
            self._unprimed = False
            await limiter.acquire(limiter.max_rate)
        while amount > 0:  # one request may weigh more than the bucket holds
            chunk = min(amount, limiter.max_rate)
            await limiter.acquire(chunk)
            amount -= chunk


@dataclass(slots=True)
class LearnedLimits:
    """Limits taught by the API's headers; kept by a dispatcher across runs."""

    rpm: int | None = None
    tpm: int | None = None


class _Axis:
    """One limited quantity (requests or tokens): ceiling, learned limit, AIMD factor."""

    def __init__(self, configured: int | None, learned: int | None, share: float = 1.0) -> None:
        self.configured = configured
        self.learned = learned
        self.share = share  # this process's part of a limit shared with other workers
        self.factor = 1.0
        self.owed = 0.0  # counted by the API beyond (or, negative, short of) our estimates
        self.bucket: _Bucket | None = None
        self.retune(primed=False)

    @property
    def base(self) -> float | None:
        known = [v for v in (self.configured, self.learned) if v]
        return float(min(known)) * self.share if known else None

    @property
    def per_minute(self) -> float | None:
        base = self.base
        return None if base is None else base * self.factor

    def retune(self, *, primed: bool = True) -> None:
        rate = self.per_minute
        current = self.bucket.per_minute if self.bucket else None
        if rate is None or (current and rate > current and rate < current * (1 + RETUNE_RATIO)):
            return
        if rate != current:
            self.bucket = _Bucket(rate, primed=primed)

    async def take(self, amount: float) -> None:
        amount, self.owed = max(amount + self.owed, 0.0), min(amount + self.owed, 0.0)
        # If the bucket is replaced while we wait, take again from the new one.
        while (bucket := self.bucket) is not None:
            await bucket.take(amount)
            if self.bucket is bucket:
                return


class Pacer:
    """Paces sends to requests/tokens per minute, known or learned, adapting on 429s."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        learned: LearnedLimits | None = None,
        *,
        share: float = 1.0,
    ) -> None:
        """``share`` (0..1] is this pacer's part of the limits when several processes
        split one job's limits (the Ray engine); configured and learned limits alike."""
        self.learned = learned if learned is not None else LearnedLimits()
        self._requests = _Axis(rpm, self.learned.rpm, share)
        self._tokens = _Axis(tpm, self.learned.tpm, share)
        self._started = time.monotonic()
        self._sent = 0
        self._last_cut = -math.inf

    @property
    def rpm_in_use(self) -> float | None:
        return self._requests.per_minute

    async def acquire(self, tokens: int) -> float:
        """Wait for room for one request of ``tokens``; returns the send time."""
        await self._requests.take(1)
        await self._tokens.take(tokens)
        self._sent += 1
        return time.monotonic()

    def observe(self, info: RateInfo) -> None:
        """Learn (or re-learn) the limits from an answer's headers."""
        if info.limit_requests and info.limit_requests != self._requests.learned:
            self.learned.rpm = self._requests.learned = info.limit_requests
            self._requests.retune()
        if info.limit_tokens and info.limit_tokens != self._tokens.learned:
            self.learned.tpm = self._tokens.learned = info.limit_tokens
            self._tokens.retune()

    def reconcile(self, estimated_prompt: int, actual_prompt: int | None) -> None:
        """The API counts real prompt tokens: the next request pays (or gets back) the gap."""
        if actual_prompt is not None and self._tokens.bucket is not None:
            self._tokens.owed += actual_prompt - estimated_prompt

    def throttled(self, sent_at: float) -> None:
        """A 429 that said nothing: halve the pace, once per burst of 429s."""
        if sent_at < self._last_cut:
            return  # sent before the last cut: that cut already answered it
        self._last_cut = time.monotonic()
        for axis in (self._requests, self._tokens):
            axis.factor = max(axis.factor / 2, MIN_FACTOR)
        if self._requests.base is None:  # what we observe is our share already
            self._requests.learned = math.ceil(self._observed_rpm() / self._requests.share)
        self._requests.retune()
        self._tokens.retune()

    def succeeded(self) -> None:
        """Additive increase: each success gives back about one request per minute."""
        for axis in (self._requests, self._tokens):
            if axis.factor < 1.0 and (base := self._requests.base):
                axis.factor = min(1.0, axis.factor + 1 / base)
                axis.retune()

    def _observed_rpm(self) -> int:
        elapsed = max(time.monotonic() - self._started, 1.0)
        return max(int(self._sent * 60 / elapsed), 2)
