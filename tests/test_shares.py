"""The Ray engine's shared limits and budget, without Ray: the coordinator's plain classes
and the workers' clients, on trio's virtual clock, with a latency on every call."""

from __future__ import annotations

import math
import random
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from batchrun._types import Request
from batchrun.engines.ray.shares import BudgetPool, GlobalPace, LeasedBudget, SharedPacer, Slots
from batchrun.job.config import Price
from batchrun.send.headers import RateInfo


class Coordinator:
    """The actor's share/lease surface, as the coordinator actor
    (``batchrun.engines.ray.coordinator.Coordinator``) exposes it."""

    def __init__(self, rpm: int | None, tpm: int | None, concurrency: int, money: float) -> None:
        self.pace = GlobalPace(rpm, tpm, clock=anyio.current_time)
        self.slots = Slots(concurrency)
        self.money = BudgetPool(money)

    def admit(self, tokens: list[int], learned: tuple[int | None, int | None]) -> list[float]:
        return self.pace.admit(tokens, learned)

    def lease(self, *args: Any) -> float | None:
        return self.money.lease(*args)

    def give_back_money(self, worker: str, amount: float, closed: bool) -> None:
        self.money.give_back(worker, amount, closed)

    def short(self, worker: str) -> bool:
        return self.money.short(worker)


def _caller(coordinator: Coordinator, rng: random.Random, latency: float) -> Any:
    async def call(name: str, *args: Any) -> Any:
        await anyio.sleep(rng.uniform(0, latency))  # there
        answer = getattr(coordinator, name)(*args)
        await anyio.sleep(rng.uniform(0, latency))  # and back
        return answer

    return call


def _run(main: Any) -> None:
    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})


def _max_in_window(events: list[tuple[float, int]], window: float = 60.0) -> int:
    events = sorted(events)
    best = 0
    for i, (start, _) in enumerate(events):
        best = max(best, sum(size for t, size in events[i:] if t < start + window))
    return best


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workers=st.integers(1, 100),
    concurrency=st.integers(1, 64),
    rpm=st.integers(1, 200),
    tpm=st.none() | st.integers(2_000, 20_000),
    rows=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_limits_hold_in_every_window_for_any_number_of_workers(
    workers: int, concurrency: int, rpm: int, tpm: int | None, rows: int, seed: int
) -> None:
    rng = random.Random(seed)
    sends: list[tuple[float, int]] = []
    in_flight = [0, 0]  # now, most ever

    async def main() -> None:
        coordinator = Coordinator(rpm, tpm, concurrency, math.inf)
        call = _caller(coordinator, rng, latency=0.15)
        left = 2 * rpm + 5  # a few minutes of virtual time
        async with anyio.create_task_group() as tg:
            for w in range(workers):
                count = min(rng.randint(0, rows), left)
                left -= count
                sizes = [rng.randint(50, 2_000) for _ in range(count)]
                tg.start_soon(worker, coordinator, call, f"w{w}", sizes)

    async def worker(coordinator: Coordinator, call: Any, name: str, sizes: list[int]) -> None:
        if not sizes:
            return
        while not (slots := coordinator.slots.take(name, min(concurrency, len(sizes)))):
            await anyio.sleep(1.0)
        pacer = SharedPacer(call, rpm, tpm, share=1 / workers, clock=anyio.current_time)
        queue = list(sizes)
        async with anyio.create_task_group() as tg:
            for _ in range(slots):
                tg.start_soon(sender, pacer, queue)
        coordinator.slots.give_back(name)

    async def sender(pacer: SharedPacer, queue: list[int]) -> None:
        while queue:
            size = queue.pop()
            await pacer.acquire(size)
            sends.append((anyio.current_time(), size))
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
            await anyio.sleep(rng.uniform(0.05, 3.0))
            in_flight[0] -= 1

    _run(main)
    assert in_flight[1] <= concurrency
    assert _max_in_window([(t, 1) for t, _ in sends]) <= rpm
    if tpm is not None:
        assert _max_in_window(sends) <= tpm


def test_a_busy_worker_uses_the_whole_limit_while_others_are_idle() -> None:
    # One worker with all the rows, three idle: 60 RPM is used, not a quarter of it.
    sends: list[float] = []

    async def main() -> None:
        coordinator = Coordinator(60, None, 2, math.inf)
        call = _caller(coordinator, random.Random(1), latency=0.01)
        assert coordinator.slots.take("busy", 2) == 2
        pacer = SharedPacer(call, 60, None, share=1 / 4, clock=anyio.current_time)

        async def sender() -> None:
            for _ in range(60):
                await pacer.acquire(100)
                sends.append(anyio.current_time())
                await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            tg.start_soon(sender)

    _run(main)
    assert _max_in_window([(t, 1) for t in sends]) <= 60
    assert sends[-1] - sends[0] < 125  # 120 sends at 60 a minute (a 60.5 s window)


def test_limits_learned_from_headers_hold_for_all_workers_and_a_busy_one_uses_them_whole() -> None:
    # No limit in the job; the API states 60 RPM. Two workers learn it: together they keep
    # it in every window, and the one with the most work is not held to half of it.
    sends: list[float] = []

    async def main() -> None:
        coordinator = Coordinator(None, None, 4, math.inf)
        call = _caller(coordinator, random.Random(2), latency=0.01)

        async def worker(rows: int) -> None:
            pacer = SharedPacer(call, None, None, share=1 / 2, clock=anyio.current_time)
            pacer.observe(RateInfo(limit_requests=60))
            for _ in range(rows):
                await pacer.acquire(100)
                sends.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, 110)
            tg.start_soon(worker, 10)

    _run(main)
    assert _max_in_window([(t, 1) for t in sends]) <= 60
    assert sends[-1] - sends[0] < 125  # 120 sends at 60 a minute (a 60.5 s window)


def test_slots_never_exceed_concurrency_and_are_shared_when_several_want_them() -> None:
    slots = Slots(4)
    assert slots.take("a", 4) == 4
    assert slots.take("b", 4) == 0  # none free: b waits
    assert slots.take("c", 4) == 0
    slots.give_back("a")
    assert slots.take("a", 4) == 0  # b and c asked first
    assert slots.take("b", 4) == 2  # an even part while c (and a) also want slots
    assert slots.take("c", 4) == 2
    assert sum(slots.held.values()) == 4


def _request(key: str) -> Request:
    return Request(key, {"messages": [{"role": "user", "content": "x" * 400}]}, key, 100, 100)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workers=st.integers(2, 8),
    budget=st.floats(0.0005, 0.05),
    real=st.floats(0.1, 1.0),
    seed=st.integers(0, 2**16),
)
def test_a_slice_held_by_one_worker_never_stops_the_job_early(
    workers: int, budget: float, real: float, seed: int
) -> None:
    """The job stops on money only when the whole remainder cannot pay one request,
    after everything in flight has settled; spend never exceeds the budget."""
    rng = random.Random(seed)
    price = Price(input=1.0, output=10.0)
    state = {"spent": 0.0, "stopped": 0, "worst": 0.0, "in_flight": 0, "at_stop": []}

    async def main() -> None:
        coordinator = Coordinator(None, None, 8, budget)
        call = _caller(coordinator, rng, latency=0.02)
        async with anyio.create_task_group() as tg:
            for w in range(workers):
                # Uneven work: one worker leases early and holds a slice for long.
                tg.start_soon(worker, call, f"w{w}", 200 if w == 0 else rng.randint(1, 50))

    async def worker(call: Any, name: str, rows: int) -> None:
        budget_ = LeasedBudget(price, call, name, clock=anyio.current_time)
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(sender, budget_, name, rows)
        finally:
            await budget_.give_back()

    async def sender(budget_: LeasedBudget, name: str, rows: int) -> None:
        for i in range(rows // 3 + 1):
            request = _request(f"{name}-{i}")
            state["worst"] = budget_.worst_case(request)
            reserved = await budget_.reserve(request)
            if reserved is None:
                state["stopped"] += 1
                state["at_stop"].append(state["in_flight"])
                return
            state["in_flight"] += 1
            await anyio.sleep(rng.uniform(0.05, 2.0))
            cost = reserved * real
            budget_.settle(reserved, cost)
            state["spent"] += cost
            state["in_flight"] -= 1

    _run(main)
    assert state["spent"] <= budget + 1e-12
    if state["stopped"]:
        # The first stop came with nothing in flight anywhere, and nothing left to pay one.
        assert state["at_stop"][0] == 0
        assert budget - state["spent"] < state["worst"]


@pytest.mark.parametrize("tokens", [5_001])
def test_a_request_larger_than_the_tpm_is_refused_not_queued(tokens: int) -> None:
    pace = GlobalPace(None, 5_000, clock=lambda: 0.0)
    assert pace.admit([tokens, 100]) == [math.inf, 0.0]
