"""The Ray coordinator's waits: a worker waiting for the stop,
for slots or for claims gets the change in the call already waiting, not at its next
poll; without a change the call returns after its wait, as a heartbeat. The coordinator
is a plain class here, on asyncio as in its Ray actor (no Ray needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from batchrun.engines.ray.coordinator import Coordinator
from batchrun.job.config import Limits

LONG_S = 30.0  # a wait that would fail the test if it ran out


def _coordinator(concurrency: int = 4) -> Coordinator:
    return Coordinator(2, None, Limits(concurrency=concurrency))


async def _timed(wait: Awaitable[Any], change: Callable[[], None]) -> tuple[Any, float]:
    """(what ``wait`` returned, its seconds), with ``change`` made 0.05 s after it began."""
    started = time.monotonic()
    task = asyncio.ensure_future(wait)
    await asyncio.sleep(0.05)
    change()
    return await task, time.monotonic() - started


def test_a_worker_waiting_for_the_stop_hears_it_at_once() -> None:
    async def main() -> None:
        coordinator = _coordinator()
        assert await coordinator.interrupted("w", 0.05) is None  # no stop: a heartbeat
        deadline, took = await _timed(
            coordinator.interrupted("w", LONG_S), lambda: coordinator.interrupt(123.0)
        )
        assert deadline == 123.0 and took < 5.0

    asyncio.run(main())


def test_a_worker_waiting_for_slots_gets_them_when_another_gives_them_back() -> None:
    async def main() -> None:
        coordinator = _coordinator(concurrency=4)
        assert await coordinator.take_slots("a", 4) == (4, None)
        assert await coordinator.take_slots("b", 4, 0.05) == (0, None)  # none free
        granted, took = await _timed(
            coordinator.take_slots("b", 4, LONG_S), lambda: coordinator.give_back_slots("a")
        )
        assert granted == (4, None) and took < 5.0

    asyncio.run(main())


def test_a_worker_waiting_for_claims_hears_their_release() -> None:
    async def main() -> None:
        coordinator = _coordinator()
        assert coordinator.claim("a+1", ["x"], "a") == []
        assert coordinator.claim("b+1", ["x"], "b") == ["x"]
        assert await coordinator.held("b+1", ["x"], "b", 0.05) == (["x"], None)
        held, took = await _timed(
            coordinator.held("b+1", ["x"], "b", LONG_S), lambda: coordinator.release("a+1")
        )
        assert held == ([], None) and took < 5.0

    asyncio.run(main())


def test_a_stop_ends_a_wait_for_slots() -> None:
    async def main() -> None:
        coordinator = _coordinator(concurrency=1)
        assert await coordinator.take_slots("a", 1) == (1, None)
        granted, took = await _timed(
            coordinator.take_slots("b", 1, LONG_S), lambda: coordinator.stop("budget")
        )
        assert granted == (0, "budget") and took < 5.0

    asyncio.run(main())
