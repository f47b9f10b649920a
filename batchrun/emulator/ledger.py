"""The billing ledger behind ``GET /emulator/ledger``: what clients asked for and paid for.

A request is *billed* once it passes auth, validation and the rate limits and
is not a ``fail`` fault; a dropped, stalled, truncated or malformed answer is
billed, like a real API that did the work and then lost the answer.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from batchrun.emulator.faults import Fault
from batchrun.emulator.limits import RollingCount

TOKEN_KINDS = ("prompt", "cached", "completion", "reasoning", "image")


class Ledger:
    """Counters the app updates on every chat-completions request."""

    def __init__(self) -> None:
        self.requests_received = 0
        self.in_flight = 0  # chat-completion requests received and not yet answered
        self.max_in_flight = 0
        self.last_received_at: float | None = None  # wall clock (time.time()), for signal tests
        self.first_received_at: float | None = None  # wall clock, for start-up benches
        self.requests_billed = 0
        self.rate_limited = 0
        self.status_counts: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.tokens: dict[str, int] = dict.fromkeys(TOKEN_KINDS, 0)
        self.billed_by_hash: Counter[str] = Counter()
        self.received_window = RollingCount()
        self.billed_window = RollingCount()

    def receive(self, now: float) -> None:
        self.requests_received += 1
        self.last_received_at = time.time()
        if self.first_received_at is None:
            self.first_received_at = self.last_received_at
        self.received_window.add(now)

    def started(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def ended(self) -> None:
        self.in_flight -= 1

    def bill(self, fingerprint: str, now: float, usage: dict[str, int]) -> None:
        """Record one billed request; ``usage`` holds the TOKEN_KINDS amounts."""
        self.requests_billed += 1
        self.billed_window.add(now)
        self.billed_by_hash[fingerprint] += 1
        tokens = self.tokens
        for kind, amount in usage.items():
            tokens[kind] += amount

    def snapshot(self, *, full: bool = False) -> dict[str, Any]:
        """The ledger as JSON-ready data; ``full`` adds every billed fingerprint."""
        twice = {h: n for h, n in self.billed_by_hash.items() if n > 1}
        data: dict[str, Any] = {
            "requests_received": self.requests_received,
            "last_received_at": self.last_received_at,
            "first_received_at": self.first_received_at,
            "requests_billed": self.requests_billed,
            "completions": {str(k): v for k, v in sorted(self.status_counts.items())},
            "tokens": dict(self.tokens),
            "rate_limited": self.rate_limited,
            "faults": {fault.value: self.faults[fault.value] for fault in Fault},
            "max_requests_in_60s": self.received_window.max_in_window,
            "max_billed_in_60s": self.billed_window.max_in_window,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "unique_bodies_billed": len(self.billed_by_hash),
            "duplicates_billed": sum(n - 1 for n in twice.values()),
            "billed_more_than_once": twice,
        }
        if full:
            data["billed_by_body_hash"] = dict(self.billed_by_hash)
        return data
