"""What an answer's headers say about the API's limits: ``x-ratelimit-*``, ``retry-after-ms``,
``Retry-After`` and LiteLLM's ``llm_provider-retry-after``.

A value that is not a finite number from 0 to a sane bound (a count up to ``MAX_COUNT``,
a wait up to ``MAX_WAIT_S``) is ignored as if the header were absent, with one warning per
header name (``forget_warnings`` starts over, once a run).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

log = logging.getLogger("batchrun")

MAX_COUNT = 10**12
"""The largest limit or remaining count believed."""
MAX_WAIT_S = 86_400.0
"""The longest wait a header may ask for and be believed (a day)."""
# Above this, a plain x-ratelimit-reset is a Unix time rather than seconds from now.
_EPOCH_AFTER = 1e9

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_READ = (b"x-ratelimit-", b"retry-after", b"llm_provider-retry-after")
_warned: set[str] = set()


def parse_duration(text: str | None) -> float | None:
    """Seconds from an OpenAI-style duration ("1s", "6m0s", "20ms") or a plain number;
    None when it is neither, or not a finite number of 0 or more.

    >>> parse_duration("6m0.5s"), parse_duration("NaN"), parse_duration("-1")
    (360.5, None, None)
    """
    if not text:
        return None
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        seconds = sum(float(number) * _UNIT_S[unit] for number, unit in parts)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


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
    retry_after_from: str = ""  # the header that gave retry_after_s

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
        return self.pause()[0]

    def pause(self) -> tuple[float | None, str]:
        """``pause_s`` and the header it came from."""
        if self.retry_after_s is not None:
            return self.retry_after_s, self.retry_after_from
        exhausted = self.exhausted_for_s()
        if exhausted is not None:
            return exhausted, "x-ratelimit-remaining at 0"
        return self.reset_s, "x-ratelimit-reset"


NO_RATE_INFO = RateInfo()


def forget_warnings() -> None:
    """Warn again about a bad header value (a new run)."""
    _warned.clear()


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
    retry_after_s, retry_after_from = _retry_after(headers)
    return RateInfo(
        limit_requests=_count(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_count(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_count(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_count(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=_wait(headers, "x-ratelimit-reset-requests"),
        reset_tokens_s=_wait(headers, "x-ratelimit-reset-tokens"),
        reset_s=_wait(headers, "x-ratelimit-reset", epoch=True),
        retry_after_s=retry_after_s,
        retry_after_from=retry_after_from,
    )


def _count(headers: Mapping[str, str], name: str) -> int | None:
    text = headers.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if 0 <= value <= MAX_COUNT:  # False for NaN
        return int(value)
    _ignored(name, text, f"a number from 0 to {MAX_COUNT:.0e}")
    return None


def _wait(
    headers: Mapping[str, str], name: str, *, epoch: bool = False, unit_s: float = 1.0
) -> float | None:
    """A wait in seconds (a number of ``unit_s`` or an OpenAI duration; with ``epoch``, a
    number above ``_EPOCH_AFTER`` is a Unix time; ``Retry-After`` may be an HTTP date)."""
    text = headers.get(name)
    if text is None:
        return None
    seconds = parse_duration(text)
    if seconds is not None:
        seconds *= unit_s
    if seconds is not None and epoch and seconds > _EPOCH_AFTER:
        seconds = max(seconds - time.time(), 0.0)
    if seconds is None and name == "retry-after":
        seconds = _http_date_in_s(text)
    if seconds is not None and seconds <= MAX_WAIT_S:
        return seconds
    _ignored(name, text, f"a wait of 0 to {MAX_WAIT_S:,.0f} s")
    return None


def _retry_after(headers: Mapping[str, str]) -> tuple[float | None, str]:
    for name, unit_s in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        if (seconds := _wait(headers, name, unit_s=unit_s)) is not None:
            return seconds, name
    name = "llm_provider-retry-after"
    return _wait(headers, name), name


def _http_date_in_s(text: str) -> float | None:
    """Seconds until an HTTP date (``Retry-After: Wed, 21 Oct 2015 07:28:00 GMT``)."""
    try:
        return max(parsedate_to_datetime(text).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _ignored(name: str, text: str, allowed: str) -> None:
    if name not in _warned:
        _warned.add(name)
        log.warning(
            "ignored the %s header %r: not %s (said once per header)", name, text[:40], allowed
        )
