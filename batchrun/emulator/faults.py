"""Injected faults and latency, drawn from the seed and the request counter.

Each admitted request takes the next draw from a generator seeded with
``--seed``, so the n-th admitted request of a run gets the same fault on every
start. The rates partition [0, 1): at most one fault per request.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

Headers = list[tuple[bytes, bytes]]


class Fault(StrEnum):
    FAIL = "fail"  # 500/502/503 with an error body; not billed
    DROP = "drop"  # connection closed without an answer, after billing
    STALL = "stall"  # answer held back for --stall-s, after billing
    TRUNCATE = "truncate"  # body or SSE stream cut short, after billing
    MALFORMED = "malformed"  # 200 with a body that is not valid JSON, after billing
    NO_USAGE = "no_usage"  # a whole answer without its usage (a proxy strips it), billed


@dataclass(frozen=True, slots=True)
class FaultRates:
    fail: float = 0.0
    drop: float = 0.0
    stall: float = 0.0
    truncate: float = 0.0
    malformed: float = 0.0
    no_usage: float = 0.0

    def thresholds(self) -> list[tuple[float, Fault]]:
        """Cumulative upper bounds, in Fault order."""
        bounds, total = [], 0.0
        for fault, rate in zip(Fault, self.as_tuple(), strict=True):
            total += rate
            bounds.append((total, fault))
        return bounds

    def as_tuple(self) -> tuple[float, ...]:
        return (self.fail, self.drop, self.stall, self.truncate, self.malformed, self.no_usage)


FAIL_ANSWERS: tuple[tuple[int, str, str, str], ...] = (
    (
        500,
        "The server had an error while processing your request.",
        "server_error",
        "internal_error",
    ),
    (502, "Bad gateway.", "server_error", "bad_gateway"),
    (
        503,
        "The engine is currently overloaded, please try again later.",
        "server_error",
        "overloaded",
    ),
)


class FaultPlan:
    """Hands out one draw per admitted request: a fault (or none) and a latency."""

    def __init__(self, rates: FaultRates, seed: int, latency_ms: float, jitter_ms: float) -> None:
        self._bounds = rates.thresholds()
        self._seed = seed
        self._latency_ms = latency_ms
        self._jitter_ms = jitter_ms
        self.reset()

    def reset(self) -> None:
        self._faults = random.Random(f"faults:{self._seed}")
        # A separate stream, so changing the jitter does not move the faults.
        self._delays = random.Random(f"latency:{self._seed}")

    def next_fault(self) -> Fault | None:
        draw = self._faults.random()
        for bound, fault in self._bounds:
            if draw < bound:
                return fault
        return None

    def fail_answer(self) -> tuple[int, str, str, str]:
        return self._faults.choice(FAIL_ANSWERS)

    def next_delay_s(self) -> float:
        """Base latency plus uniform jitter in [-jitter, +jitter], never negative."""
        if self._jitter_ms <= 0:
            return self._latency_ms / 1000
        jitter = self._delays.uniform(-self._jitter_ms, self._jitter_ms)
        return max(self._latency_ms + jitter, 0.0) / 1000


def literal_headers(headers: Headers, literal: Sequence[tuple[bytes, bytes]]) -> Headers:
    """``headers`` with each ``literal`` (name, value) in place of any of that name: a
    server that sends nonsense (``retry-after: NaN``) where a number belongs."""
    if not literal:
        return headers
    names = {name for name, _ in literal}
    return [h for h in headers if h[0] not in names] + list(literal)
