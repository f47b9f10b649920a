"""Rolling 60-second request and token limits, and the headers that report them.

A rejected request does not count against the window (as with OpenAI), so a
client that waits for ``Retry-After`` is admitted when it comes back.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0
Headers = list[tuple[bytes, bytes]]


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``"20ms"``, ``"1.2s"``, ``"6m0s"``."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


class RollingCount:
    """Events in the last 60 s; tracks the most ever seen in one window."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        self.max_in_window = 0

    def add(self, now: float) -> None:
        self._expire(now)
        self._times.append(now)
        self.max_in_window = max(self.max_in_window, len(self._times))

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def oldest(self) -> float | None:
        return self._times[0] if self._times else None

    def _expire(self, now: float) -> None:
        times = self._times
        while times and times[0] <= now - WINDOW_S:
            times.popleft()


class RollingSum:
    """Token amounts in the last 60 s."""

    def __init__(self) -> None:
        self._entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, now: float, amount: int) -> None:
        self._expire(now)
        self._entries.append((now, amount))
        self.total += amount

    def current(self, now: float) -> int:
        self._expire(now)
        return self.total

    def wait_for_room(self, now: float, needed: int) -> float:
        """Seconds until at least ``needed`` more fits under ``limit`` (entries expire)."""
        freed = 0
        for stamp, amount in self._entries:
            freed += amount
            if freed >= needed:
                return stamp + WINDOW_S - now
        return WINDOW_S

    def oldest(self) -> float | None:
        return self._entries[0][0] if self._entries else None

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries and entries[0][0] <= now - WINDOW_S:
            self.total -= entries.popleft()[1]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A rate-limit decision. ``limit_name`` says which limit refused, if any."""

    allowed: bool
    headers: Headers
    retry_after: float = 0.0
    limit_name: str = ""
    message: str = ""


@dataclass
class RateLimiter:
    """RPM and TPM over a rolling window; ``None`` means unlimited."""

    rpm: int | None
    tpm: int | None
    _requests: RollingCount = field(default_factory=RollingCount)
    _tokens: RollingSum = field(default_factory=RollingSum)

    def reset(self) -> None:
        self._requests, self._tokens = RollingCount(), RollingSum()

    def admit(self, tokens: int, now: float) -> Verdict:
        """Admit and record the request, or refuse it with how long to wait."""
        refusal = self._refusal(tokens, now)
        if refusal is not None:
            return refusal
        if self.rpm is not None:
            self._requests.add(now)
        if self.tpm is not None:
            self._tokens.add(now, tokens)
        return Verdict(True, self._headers(now, 0.0, 0.0))

    def _refusal(self, tokens: int, now: float) -> Verdict | None:
        if self.rpm is not None and self._requests.count(now) >= self.rpm:
            wait = (self._requests.oldest() or now) + WINDOW_S - now
            used = self._requests.count(now)
            message = f"requests per min (RPM): Limit {self.rpm}, Used {used}, Requested 1."
            return self._refuse(now, wait, "requests", message, wait, 0.0)
        if self.tpm is not None:
            used = self._tokens.current(now)
            if used + tokens > self.tpm:
                wait = self._tokens.wait_for_room(now, used + tokens - self.tpm)
                message = (
                    f"tokens per min (TPM): Limit {self.tpm}, Used {used}, Requested {tokens}."
                )
                return self._refuse(now, wait, "tokens", message, 0.0, wait)
        return None

    def _refuse(
        self, now: float, wait: float, name: str, detail: str, req_wait: float, tok_wait: float
    ) -> Verdict:
        wait = max(wait, 0.001)
        message = f"Rate limit reached on {detail} Please try again in {go_duration(wait)}."
        headers = self._headers(now, req_wait, tok_wait)
        headers.append((b"retry-after", str(math.ceil(wait)).encode()))
        headers.append((b"retry-after-ms", str(math.ceil(wait * 1000)).encode()))
        return Verdict(False, headers, wait, name, message)

    def _headers(self, now: float, req_wait: float, tok_wait: float) -> Headers:
        # reset-* is the time until the remaining count next grows (oldest entry expires),
        # or the refusal's wait when that is longer.
        headers: Headers = []
        if self.rpm is not None:
            used = self._requests.count(now)
            reset = max(req_wait, _until_expiry(self._requests.oldest(), now))
            headers += _limit_headers(b"requests", self.rpm, self.rpm - used, reset)
        if self.tpm is not None:
            used = self._tokens.current(now)
            reset = max(tok_wait, _until_expiry(self._tokens.oldest(), now))
            headers += _limit_headers(b"tokens", self.tpm, self.tpm - used, reset)
        return headers


def _until_expiry(oldest: float | None, now: float) -> float:
    return 0.0 if oldest is None else oldest + WINDOW_S - now


def _limit_headers(kind: bytes, limit: int, remaining: int, reset: float) -> Headers:
    return [
        (b"x-ratelimit-limit-" + kind, str(limit).encode()),
        (b"x-ratelimit-remaining-" + kind, str(max(remaining, 0)).encode()),
        (b"x-ratelimit-reset-" + kind, go_duration(reset).encode()),
    ]


@dataclass
class TerseLimiter:
    """A server like the LiteLLM proxy: fixed windows, refusals count, terse headers.

    Each ``window_s`` (aligned to multiples of it) allows ``rpm`` / ``tpm`` scaled to the
    window; a refused request still counts against the window's requests. Answers carry
    ``x-ratelimit-limit-*`` and ``-remaining-*`` (per minute) but no reset header; a 429
    carries nothing, or only ``llm_provider-retry-after`` (the window) with ``vendor_retry``.
    """

    rpm: int | None
    tpm: int | None
    window_s: float = WINDOW_S
    vendor_retry: bool = False
    admitted_per_window: dict[int, int] = field(default_factory=dict)
    _window: int = -1
    _requests: int = 0
    _tokens: int = 0

    def reset(self) -> None:
        self._window, self._requests, self._tokens = -1, 0, 0
        self.admitted_per_window = {}

    def admit(self, tokens: int, now: float) -> Verdict:
        window = int(now // self.window_s)
        if window != self._window:
            self._window, self._requests, self._tokens = window, 0, 0
        self._requests += 1
        scale = self.window_s / WINDOW_S
        if self.rpm is not None and self._requests > self.rpm * scale:
            return self._refuse("requests", self.rpm)
        if self.tpm is not None and self._tokens + tokens > self.tpm * scale:
            return self._refuse("tokens", self.tpm)
        self._tokens += tokens
        self.admitted_per_window[window] = self.admitted_per_window.get(window, 0) + 1
        return Verdict(True, self._headers(scale))

    def _refuse(self, name: str, limit: int) -> Verdict:
        headers: Headers = []
        if self.vendor_retry:
            headers.append((b"llm_provider-retry-after", str(math.ceil(self.window_s)).encode()))
        message = f"Rate limit exceeded: {name} per minute limit {limit}."
        return Verdict(False, headers, 0.0, name, message)

    def _headers(self, scale: float) -> Headers:
        headers: Headers = []
        counts = ((b"requests", self.rpm, self._requests), (b"tokens", self.tpm, self._tokens))
        for kind, limit, used in counts:
            if limit is not None:
                left = max(int(limit - used / scale), 0)
                headers.append((b"x-ratelimit-limit-" + kind, str(limit).encode()))
                headers.append((b"x-ratelimit-remaining-" + kind, str(left).encode()))
        return headers
