"""SIGINT / SIGTERM: nothing is sent after the signal, and every answer that arrives is kept.

End to end: the real `batchrun run` in a subprocess against the emulator, with the
emulator's ledger (receive times, bills) as the proof. On a virtual clock: the real
``Pipeline`` and ``Dispatcher`` over a fake transport, stopped at a random moment while
workers wait on the pacer, on a 429 pause, in backoff and on the wire.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import pyarrow.parquet as pq
import pytest
from conftest import run_batchrun, start_batchrun, wait_for_requests, write_job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from batchrun._types import Request
from batchrun.engines.pipeline import Pipeline
from batchrun.job.config import InputConfig, Job, Limits, OutputConfig, Price, RequestConfig
from batchrun.send.dispatch import Dispatcher
from batchrun.send.ratelimit import Backoff, Pacer, PauseGate
from batchrun.send.requests import estimate_prompt_tokens
from batchrun.store.intents import IntentLog

# A signal may find the process between two event-loop turns: this is its allowance.
SEND_ALLOWANCE_S = 0.1


def _statuses(job: Path) -> Counter[str]:
    return Counter(pq.read_table(job.parent / "out.parquet").column("status").to_pylist())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_sends_nothing_more_and_every_billed_answer_is_in_the_checkpoint(
    tmp_path: Path, emulator, signum: signal.Signals
) -> None:
    # 120 RPM with 8 workers: most of them wait on the pacer, some in backoff after a 500.
    emu = emulator("--latency-ms", "500", "--jitter-ms", "300", "--fail-rate", "0.25")
    limits = {"concurrency": 8, "requests_per_minute": 120, "max_attempts": 6}
    job = write_job(tmp_path, rows=40, limits=limits)
    run = start_batchrun(job, emu)
    wait_for_requests(emu, 6)
    signalled_at = time.time()
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=30)

    assert run.returncode == 130, stderr
    ledger = emu.ledger()
    late_s = ledger["last_received_at"] - signalled_at
    print(f"{signum.name}: last request received {late_s:+.3f} s after the signal")
    assert late_s <= SEND_ALLOWANCE_S, stderr
    assert f"{signum.name}: sending nothing more" in stderr
    assert f"{signum.name}: stopped;" in stderr, stderr
    # Every answer billed is in the output (from the checkpoint): a resume pays nothing twice.
    assert _statuses(job)["ok"] == ledger["requests_billed"]
    fast = "limits.requests_per_minute=100000"
    rerun = run_batchrun(job, emu, "--set", fast)
    assert rerun.returncode == 0, rerun.stderr
    assert _statuses(job) == {"ok": 40}
    assert emu.ledger()["duplicates_billed"] == 0


# --- on a virtual clock: the real Pipeline and Dispatcher, a fake API -----------------

PRICE = Price(input=1.25, cached_input=0.125, output=10.0)
COMPLETION = {
    "id": "x",
    "model": "gpt-5.5",
    "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
# What the fake API does with one attempt: answer, fail (500: backoff) or 429 (pause).
Attempt = tuple[Literal["ok", "500", "429"], float]


@dataclass
class Scenario:
    plans: list[list[Attempt]]  # per row, its attempts in order (then: ok after 0.1 s)
    concurrency: int
    interval_s: float  # the pacer's spacing between sends
    stop_at: float
    grace_s: float
    seed: int


class PacedDispatcher(Dispatcher):
    """The real ``Pacer`` on anyio's clock (a trio MockClock here), one send per interval."""

    def __init__(self, job: Job, interval_s: float, **kwargs: Any) -> None:
        super().__init__(job, **kwargs)
        self.rpm = max(round(60 / interval_s), 1)

    def pacer(self) -> Pacer:  # made inside the event loop, whose clock it reads
        return Pacer(self.rpm, None, clock=anyio.current_time)


class FakeApi:
    """A MockTransport handler on the virtual clock that notes every send and answer."""

    def __init__(self, plans: list[list[Attempt]]) -> None:
        self.plans = plans
        self.attempts: Counter[int] = Counter()
        self.sends: list[tuple[float, bool]] = []  # (when, after the stop call)
        self.answered: dict[str, float] = {}  # row key -> when its ok answer left
        self.stopped_at: float | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        row = int(json.loads(request.content)["messages"][0]["content"])
        attempt = self.attempts[row]
        self.attempts[row] += 1
        self.sends.append((anyio.current_time(), self.stopped_at is not None))
        plan = self.plans[row]
        kind, latency_s = plan[attempt] if attempt < len(plan) else ("ok", 0.1)
        await anyio.sleep(latency_s)
        if kind == "500":
            return httpx.Response(500, json={"error": {"message": "boom"}})
        if kind == "429":
            return httpx.Response(429, headers={"retry-after-ms": "1500"}, json={"error": {}})
        self.answered[str(row)] = anyio.current_time()
        return httpx.Response(200, json=COMPLETION)


class MemoryStore:
    """The checkpoint surface ``Pipeline`` needs, keeping what the writer received."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def answered(self, fingerprints: Sequence[str], *, include_failed: bool = True) -> set[str]:
        return set()

    async def write_results(self, results: Any, on_commit: Any = None, intents: Any = None) -> None:
        async with anyio.create_task_group() as tg:
            if intents is not None:
                tg.start_soon(commit_intents, intents)
            async with results:
                async for request, _result in results:
                    self.written.append(request.key)
            tg.cancel_scope.cancel()


async def commit_intents(intents: IntentLog) -> None:
    """A writer's write-ahead part, in memory: every intent committed as it comes."""
    ids = itertools.count(1)
    while True:
        await intents.wait_for_work()
        new, _released = intents.take()
        intents.committed(new, [next(ids) for _ in new])


def _request(row: int) -> Request:
    body = {
        "model": "gpt-5.5",
        "messages": [{"role": "user", "content": str(row)}],
        "max_completion_tokens": 32,
    }
    return Request(str(row), body, f"v1:{row}", estimate_prompt_tokens(body), 32)


_attempt = st.tuples(st.sampled_from(["ok", "500", "429"]), st.floats(0.01, 8.0, allow_nan=False))
_scenarios = st.builds(
    Scenario,
    plans=st.lists(st.lists(_attempt, max_size=3), min_size=1, max_size=24),
    concurrency=st.integers(1, 8),
    interval_s=st.floats(0.05, 3.0),
    stop_at=st.floats(0.0, 15.0),
    grace_s=st.floats(0.5, 10.0),
    seed=st.integers(0, 2**16),
)


def _run_until_stopped(scenario: Scenario) -> tuple[FakeApi, MemoryStore, float]:
    api, store = FakeApi(scenario.plans), MemoryStore()
    limits = Limits(concurrency=scenario.concurrency, max_attempts=4)
    job = Job(
        name="signals-test",
        input=InputConfig(path="unused.csv"),
        request=RequestConfig(model="gpt-5.5", prompt="{text}", max_completion_tokens=32),
        output=OutputConfig(path="unused.parquet"),
        limits=limits,
        pricing={"gpt-5.5": PRICE},
    )
    dispatcher = PacedDispatcher(
        job, scenario.interval_s, api_key="sk-test", base_url="http://127.0.0.1:9",
        transport=httpx.MockTransport(api), backoff=Backoff(base_s=0.5, cap_s=8.0),
        rng=random.Random(scenario.seed), gate=PauseGate(clock=anyio.current_time),
    )  # fmt: skip
    pipeline = Pipeline(job, store, dispatcher)
    ended: list[float] = []

    async def stop() -> None:
        await anyio.sleep(scenario.stop_at)
        api.stopped_at = anyio.current_time()
        pipeline.stop_sending(scenario.grace_s)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop)
            await pipeline.run([[_request(row) for row in range(len(scenario.plans))]])
            ended.append(anyio.current_time())
            tg.cancel_scope.cancel()

    clock = MockClock(autojump_threshold=0)
    anyio.run(main, backend="trio", backend_options={"clock": clock})
    return api, store, ended[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=_scenarios)
def test_after_stop_sending_nothing_is_sent_and_every_answer_back_in_the_grace_is_saved(
    scenario: Scenario,
) -> None:
    api, store, ended_at = _run_until_stopped(scenario)
    if api.stopped_at is None:
        return  # everything finished before the stop
    # Workers waiting on the pacer, the 429 pause, a backoff or the queue send nothing more.
    assert not any(after for _, after in api.sends)
    assert max((at for at, _ in api.sends), default=-math.inf) <= api.stopped_at
    # The sends on the wire end by the grace deadline; each answer back by then is saved.
    deadline = api.stopped_at + scenario.grace_s
    assert ended_at <= deadline + 1e-9
    back_in_time = {key for key, at in api.answered.items() if at < deadline}
    assert back_in_time <= set(store.written)
    assert len(store.written) == len(set(store.written))
