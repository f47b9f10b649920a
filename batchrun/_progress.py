"""The progress of a run on stderr: a tqdm bar on a terminal, else a ``progress`` event
every few seconds; both show the share of the rate limit in use."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

__all__ = ["ProgressDisplay", "progress_line"]

log = logging.getLogger("batchrun")


class ProgressDisplay:
    """A tqdm bar on a TTY (text logs); a ``progress`` event every few seconds otherwise
    (``lines``); the limit use in either case (``counters.rate_use``)."""

    LOG_EVERY_S = 5.0
    DRAW_EVERY_S = 0.2
    WINDOW_S = 60.0  # the window a requests-per-minute limit counts
    PACE_S = 10.0

    def __init__(self, *, bar: bool, lines: bool = True) -> None:
        self._bar: Any = None
        self.lines = lines
        self._last_log = 0.0
        self._last_draw = 0.0
        self._last: Any = None
        self.bar = bar
        self._sent: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    def __call__(self, counters: Any) -> None:
        # Called for every finished row: render at most a few times a second.
        now = time.monotonic()
        self._last = counters
        if now - self._last_draw < self.DRAW_EVERY_S:
            return
        self._last_draw = now
        counters.rate_use = self._rate_use(counters)
        if self.bar:
            self._update_bar(counters)
        elif self.lines and now - self._last_log >= self.LOG_EVERY_S:
            self._last_log = now
            log.info(progress_line(counters), extra=_progress_fields(counters))

    def _update_bar(self, counters: Any) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=counters.total or None, unit="row", dynamic_ncols=True)
        self._bar.n = counters.finished
        self._bar.set_postfix_str(_postfix(counters), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._update_bar(self._last)  # the last rows may have come between draws
            self._bar.close()

    def _rate_use(self, counters: Any) -> float | None:
        """The share of the RPM limit in use: the higher of the requests sent in the last
        60 s (the window the limit counts) and the pace of the last 10 s, that one at most
        100%. So it reads over 100% only when a window held more than the limit, 100%
        while the pacer waits for room in a full window, and the pace otherwise.

        Counted from the earliest sample inside a window: never more than were sent in it.
        """
        now = time.monotonic()
        samples = self._sent
        samples.append((now, counters.sent))
        while samples[0][0] < now - self.WINDOW_S:
            samples.popleft()
        if not counters.rpm_limit:
            return None
        in_window = (counters.sent - samples[0][1]) / counters.rpm_limit
        since, sent = next(s for s in samples if s[0] >= now - self.PACE_S)
        if now - since < 3.0:  # judge the pace only once a few seconds are in
            return float(in_window)
        pace = (counters.sent - sent) * 60.0 / (now - since) / counters.rpm_limit
        return float(max(in_window, min(pace, 1.0)))


def _postfix(counters: Any) -> str:
    parts = [f"err={counters.failed}", f"429={counters.rate_limited}"]
    parts.append(f"${counters.cost_usd:.4f}")
    if getattr(counters, "rate_use", None) is not None:
        parts.append(f"limit use={counters.rate_use:.0%}")
    paused = getattr(counters, "paused", None)
    if paused is not None and (left := paused[0] - time.monotonic()) > 0:
        parts.append(f"paused {left:.0f} s more: the server asked ({paused[1]})")
    return " ".join(parts)


def _progress_fields(counters: Any) -> dict[str, Any]:
    return {
        "event": "progress",
        "rows_done": counters.finished,
        "rows_total": counters.total,
        "failed": counters.failed,
        "sent": counters.sent,
        "rate_limited": counters.rate_limited,
        "cost_usd": round(counters.cost_usd, 6),
        "limit_use": getattr(counters, "rate_use", None),
    }


def progress_line(counters: Any) -> str:
    total = counters.total or "?"
    return f"{counters.finished}/{total} rows, {_postfix(counters)}"
