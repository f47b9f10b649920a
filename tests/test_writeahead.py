"""Write-ahead spend: no stop loses an attempt the API billed, so a budget holds over runs.

End to end: the real `batchrun run` in a subprocess against the emulator, stopped by the
budget while rows wait to retry, by kill -9 and by two SIGINTs while every answer is
slower than the stop; the emulator's billing ledger is the proof. What the checkpoint
counts as spent must cover what was billed, and a second run on a healthy server must
keep the total billed within ``limits.max_cost_usd``.
"""

from __future__ import annotations

import itertools
import json
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
import pytest
from conftest import billed_usd, run_batchrun, start_batchrun, wait_for_requests, write_job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from batchrun._errors import FatalApiError
from batchrun._types import Request
from batchrun.emulator import EmulatorProcess
from batchrun.engines.base import budget_for
from batchrun.engines.pipeline import Pipeline
from batchrun.io.input import open_input
from batchrun.job.config import InputConfig, Job, Limits, OutputConfig, Price, RequestConfig
from batchrun.job.load import load_job
from batchrun.send.budget import Budget
from batchrun.send.dispatch import Dispatcher
from batchrun.send.ratelimit import Backoff, PauseGate
from batchrun.send.requests import RequestBuilder, built_batches, estimate_prompt_tokens
from batchrun.store.checkpoint import Checkpoint, CheckpointReader


def _spent(job: Path) -> float:
    reader = CheckpointReader.open(job.parent / "out.parquet.ckpt.sqlite", job_name="test-job")
    assert reader is not None
    with reader:
        return reader.spent_usd()


def _wait_billed(emu: EmulatorProcess, at_least: int) -> float:
    deadline = time.monotonic() + 20
    while (ledger := emu.ledger())["requests_billed"] < at_least:
        assert time.monotonic() < deadline, ledger
        time.sleep(0.01)
    return billed_usd(ledger)


def test_a_budget_stop_counts_the_attempts_of_rows_waiting_to_retry(
    tmp_path: Path, emulator
) -> None:
    # Most connections drop after billing: at the budget stop, many rows sleep in backoff
    # holding attempts that may have been billed.
    emu = emulator("--drop-rate", "0.6", "--latency-ms", "100")
    budget = 0.04
    limits = {"concurrency": 32, "max_attempts": 6, "max_cost_usd": budget}
    job = write_job(tmp_path, rows=400, limits=limits)

    first = run_batchrun(job, emu)
    assert first.returncode == 3, first.stderr
    billed = billed_usd(emu.ledger())
    assert _spent(job) >= billed

    second = run_batchrun(job, emu)
    assert second.returncode == 3, second.stderr
    assert billed_usd(emu.ledger()) <= budget


def _stopped_on_the_wire_then_finished(tmp_path: Path, emulator, stop: str) -> tuple[float, float]:
    """Run with every answer slower than the stop, stop it with ``stop``, then finish the
    job on a healthy server; (billed by the slow one, billed in all)."""
    slow, healthy = emulator("--latency-ms", "8000"), emulator()
    budget = 0.002  # well under the job's cost: the second run stops on money
    job = write_job(tmp_path, rows=40, limits={"concurrency": 8, "max_cost_usd": budget})
    run = start_batchrun(job, slow)
    wait_for_requests(slow, 8)
    billed = _wait_billed(slow, 8)
    if stop == "kill -9":
        run.kill()
    else:  # the second signal stops at once, cutting the sends on the wire
        run.send_signal(signal.SIGINT)
        time.sleep(0.2)
        run.send_signal(signal.SIGINT)
    run.communicate(timeout=30)
    assert run.returncode == (-signal.SIGKILL if stop == "kill -9" else 130)
    assert _spent(job) >= billed

    finish = run_batchrun(job, healthy)
    assert finish.returncode == 3, finish.stderr
    return billed, billed + billed_usd(healthy.ledger())


def test_kill_9_with_every_answer_on_the_wire_keeps_them_in_the_budget(
    tmp_path: Path, emulator
) -> None:
    _, billed_in_all = _stopped_on_the_wire_then_finished(tmp_path, emulator, "kill -9")
    assert billed_in_all <= 0.002


def test_two_sigints_cutting_the_sends_on_the_wire_keep_them_in_the_budget(
    tmp_path: Path, emulator
) -> None:
    _, billed_in_all = _stopped_on_the_wire_then_finished(tmp_path, emulator, "SIGINT twice")
    assert billed_in_all <= 0.002


# --- on a virtual clock: the real Pipeline and Dispatcher, a fake API that bills ---------

PRICE = Price(input=1.25, cached_input=0.125, output=10.0)
USAGE = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
REAL_COST = PRICE.cost(3, 0, 1)
# One attempt: answered, dropped after billing, refused unbilled (500, 429), or fatal (401).
Attempt = tuple[Literal["ok", "drop", "500", "429", "401"], float]


@dataclass
class Scenario:
    plans: list[list[Attempt]]  # per row, its attempts in order (then: ok after 0.1 s)
    concurrency: int
    max_cost_usd: float | None
    stop_at: float
    grace_s: float
    hard_after: float | None  # a second signal this long after the first: stop at once


class BillingApi:
    """A MockTransport handler on the virtual clock; it bills an attempt as it arrives."""

    def __init__(self, plans: list[list[Attempt]]) -> None:
        self.plans = plans
        self.attempts: Counter[int] = Counter()
        self.billed = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        row = int(json.loads(request.content)["messages"][0]["content"])
        attempt, self.attempts[row] = self.attempts[row], self.attempts[row] + 1
        plan = self.plans[row]
        kind, latency_s = plan[attempt] if attempt < len(plan) else ("ok", 0.1)
        if kind in ("ok", "drop"):
            self.billed += REAL_COST
        await anyio.sleep(latency_s)
        if kind == "drop":
            raise httpx.RemoteProtocolError("server disconnected after billing")
        if kind in ("500", "401"):
            return httpx.Response(int(kind), json={"error": {"message": "no"}})
        if kind == "429":
            return httpx.Response(429, headers={"retry-after-ms": "1500"}, json={"error": {}})
        body = {"id": "x", "model": "gpt-5.5", "usage": USAGE}
        body["choices"] = [{"message": {"content": "ok"}, "finish_reason": "stop"}]
        return httpx.Response(200, json=body)


class LedgerStore:
    """The checkpoint's money in memory: charges stored with results, intents written ahead."""

    def __init__(self) -> None:
        self.charged = 0.0
        self.unsettled: dict[int, float] = {}

    @property
    def spent_usd(self) -> float:
        return self.charged + sum(self.unsettled.values())

    def answered(self, fingerprints: Sequence[str], *, include_failed: bool = True) -> set[str]:
        return set()

    async def write_results(self, results: Any, on_commit: Any = None, intents: Any = None) -> None:
        async with anyio.create_task_group() as tg:
            if intents is not None:
                tg.start_soon(self._write_ahead, intents)
            async with results:
                async for _request, result in results:
                    for charge in result.charges:
                        self.charged += charge.cost_usd
                        self.unsettled.pop(getattr(charge, "intent", None), None)  # type: ignore[arg-type]
            tg.cancel_scope.cancel()

    async def _write_ahead(self, intents: Any) -> None:
        ids = itertools.count(1)
        while True:
            await intents.wait_for_work()
            new, released = intents.take()
            for id_ in released:
                del self.unsettled[id_]
            fresh = [next(ids) for _ in new]
            self.unsettled.update(zip(fresh, (intent.cost_usd for intent in new), strict=True))
            intents.committed(new, fresh)


def _request(row: int) -> Request:
    body = {
        "model": "gpt-5.5",
        "messages": [{"role": "user", "content": str(row)}],
        "max_completion_tokens": 32,
    }
    return Request(str(row), body, f"v1:{row}", estimate_prompt_tokens(body), 32)


def _run_stopped(scenario: Scenario) -> tuple[BillingApi, LedgerStore]:
    api, store = BillingApi(scenario.plans), LedgerStore()
    job = Job(
        name="write-ahead",
        input=InputConfig(path="unused.csv"),
        request=RequestConfig(model="gpt-5.5", prompt="{text}", max_completion_tokens=32),
        output=OutputConfig(path="unused.parquet"),
        limits=Limits(concurrency=scenario.concurrency, max_attempts=4),
        pricing={"gpt-5.5": PRICE},
    )
    budget = None if scenario.max_cost_usd is None else Budget(scenario.max_cost_usd, PRICE)
    dispatcher = Dispatcher(
        job, api_key="sk-test", base_url="http://127.0.0.1:9", budget=budget,
        transport=httpx.MockTransport(api), backoff=Backoff(base_s=0.5, cap_s=8.0),
        rng=random.Random(0), gate=PauseGate(clock=anyio.current_time),
    )  # fmt: skip
    pipeline = Pipeline(job, store, dispatcher)

    async def stop(scope: anyio.CancelScope) -> None:
        await anyio.sleep(scenario.stop_at)
        pipeline.stop_sending(scenario.grace_s)
        if scenario.hard_after is not None:
            await anyio.sleep(scenario.hard_after)
            scope.cancel()

    async def main() -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop, tg.cancel_scope)
                await pipeline.run([[_request(row) for row in range(len(scenario.plans))]])
                tg.cancel_scope.cancel()
        except* FatalApiError:
            pass

    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    return api, store


_kinds = st.sampled_from(["ok", "drop", "drop", "500", "429", "401"])
_attempt = st.tuples(_kinds, st.floats(0.01, 8.0, allow_nan=False))
_scenarios = st.builds(
    Scenario,
    plans=st.lists(st.lists(_attempt, max_size=4), min_size=1, max_size=24),
    concurrency=st.integers(1, 8),
    max_cost_usd=st.none() | st.floats(REAL_COST, 40 * REAL_COST),
    stop_at=st.floats(0.0, 15.0),
    grace_s=st.floats(0.0, 10.0),
    hard_after=st.none() | st.floats(0.0, 5.0),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=_scenarios)
def test_every_billed_attempt_is_spent_in_the_checkpoint_whenever_the_run_stops(
    scenario: Scenario,
) -> None:
    # Stopped by money (rows waiting for the budget), a signal (rows in backoff, sends
    # cut at the grace deadline), a second signal (everything cut), or a fatal 401.
    api, store = _run_stopped(scenario)
    assert store.spent_usd >= api.billed - 1e-12


def test_a_row_stopped_in_its_retry_backoff_keeps_its_dropped_attempt() -> None:
    # The drop comes back at 0.1 s; the row sleeps in backoff when the signal comes.
    scenario = Scenario([[("drop", 0.1)]], 1, None, 0.1 + 1e-6, 1.0, None)
    api, store = _run_stopped(scenario)
    assert api.billed == REAL_COST
    assert store.spent_usd >= REAL_COST


def test_a_row_stopped_waiting_for_the_budget_keeps_its_dropped_attempt() -> None:
    # Room for two attempts and a half: row 1's retry waits for row 0's slow answer.
    worst = Budget(1.0, PRICE).worst_case(_request(0))
    scenario = Scenario([[("ok", 5.0)], [("drop", 0.1)]], 2, 2.5 * worst, 1.0, 8.0, None)
    api, store = _run_stopped(scenario)
    assert api.billed == 2 * REAL_COST
    assert store.spent_usd >= 2 * REAL_COST


# --- two runs of one job, the first stopped at a random moment --------------------------

TWO_RUN_BUDGET = 0.004  # about 23 attempts at the worst case: well under the job's cost
DROPPY = ("--drop-rate", "0.5", "--latency-ms", "60", "--jitter-ms", "50")


def _real_run(job: Job, base_url: str, stop: tuple[str, float, float] | None) -> None:
    """One run of ``job`` on a real checkpoint; ``stop``: (how, after s, grace s)."""
    with Checkpoint.open(job.output.checkpoint_path, job_name=job.name) as ckpt:
        dispatcher = Dispatcher(
            job, api_key="sk-test", base_url=base_url, budget=budget_for(job, ckpt.spent_usd()),
            backoff=Backoff(base_s=0.05, cap_s=0.2),
        )  # fmt: skip
        pipeline = Pipeline(job, ckpt, dispatcher)
        table = open_input(job)
        items = [items for _, items in built_batches(table, RequestBuilder(job, table.schema))]

        async def stopper(scope: anyio.CancelScope) -> None:
            assert stop is not None
            how, after_s, grace_s = stop
            await anyio.sleep(after_s)
            if how == "signal":
                pipeline.stop_sending(grace_s)
            else:  # a second signal, a fatal answer: everything cut at once
                scope.cancel()

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                if stop is not None:
                    tg.start_soon(stopper, tg.cancel_scope)
                await pipeline.run(items)
                tg.cancel_scope.cancel()

        anyio.run(main)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    how=st.sampled_from(["signal", "cut"]),
    after_s=st.floats(0.0, 0.4),
    grace_s=st.floats(0.0, 0.2),
)
def test_billed_stays_within_the_budget_over_a_stopped_run_and_its_resume(
    tmp_path_factory: pytest.TempPathFactory, emulators: Any, how: str, after_s: float,
    grace_s: float,
) -> None:  # fmt: skip
    emu = emulators.get(*DROPPY)  # reset: an empty ledger
    limits = {"concurrency": 8, "max_attempts": 4, "max_cost_usd": TWO_RUN_BUDGET}
    path = write_job(tmp_path_factory.mktemp("job"), rows=60, limits=limits)
    job = load_job(path, sets=[f'input.path="{path.parent / "input.csv"}"',
                               f'output.path="{path.parent / "out.parquet"}"'])  # fmt: skip
    _real_run(job, emu.base_url, (how, after_s, grace_s))
    _real_run(job, emu.base_url, None)
    assert billed_usd(emu.ledger()) <= TWO_RUN_BUDGET


def test_a_fatal_answer_cutting_a_send_on_the_wire_keeps_it() -> None:
    # Row 1's 401 aborts the job while row 0's (billed) answer is still on its way.
    scenario = Scenario([[("ok", 5.0)], [("401", 0.1)]], 2, None, 60.0, 1.0, None)
    api, store = _run_stopped(scenario)
    assert api.billed == REAL_COST
    assert store.spent_usd >= REAL_COST
