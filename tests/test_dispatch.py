"""The dispatcher against the real emulator on loopback (MockTransport for one 429 shape)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

from batchrun._errors import FatalApiError
from batchrun._types import Request, Result
from batchrun.emulator import EmulatorProcess
from batchrun.job.config import InputConfig, Job, Limits, OutputConfig, Price, RequestConfig
from batchrun.send.budget import Budget, result_cost
from batchrun.send.dispatch import Counters, Dispatcher, DispatchOutcome
from batchrun.send.ratelimit import Backoff
from batchrun.send.requests import estimate_prompt_tokens

KEY = "sk-test-dispatch-key"
FAST = Backoff(base_s=0.01, cap_s=0.05)
PRICE = Price(input=1.25, cached_input=0.125, output=10.0)
Finished = list[tuple[Request, Result]]


def _job(**limits: Any) -> Job:
    return Job(
        name="dispatch-test",
        input=InputConfig(path="unused.csv"),
        request=RequestConfig(model="gpt-5.5", prompt="{text}", max_completion_tokens=32),
        output=OutputConfig(path="unused.parquet"),
        limits=Limits(**limits),
        pricing={"gpt-5.5": PRICE},
    )


def _request(i: int, *, stream: bool = False, **extra: Any) -> Request:
    body: dict[str, Any] = {
        "model": "gpt-5.5",
        "messages": [{"role": "user", "content": f"Label review number {i}, please."}],
        "max_completion_tokens": 32,
        **extra,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return Request(str(i), body, f"v1:{i}", estimate_prompt_tokens(body), 32)


def _requests(n: int, **kwargs: Any) -> list[Request]:
    return [_request(i, **kwargs) for i in range(n)]


def _run(
    dispatcher: Dispatcher, requests: Sequence[Request], *, within: float = math.inf
) -> tuple[DispatchOutcome | None, Finished]:
    """Feed ``requests``, collect what comes out; give up (cancel) after ``within`` s."""
    finished: Finished = []
    outcome: list[DispatchOutcome] = []

    async def main() -> None:
        req_send, req_recv = anyio.create_memory_object_stream[Request](len(requests) + 1)
        res_send, res_recv = anyio.create_memory_object_stream[tuple[Request, Result]](16)
        async with req_send:
            for request in requests:
                req_send.send_nowait(request)

        async def collect() -> None:
            async for item in res_recv:
                finished.append(item)

        with anyio.move_on_after(within):
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect)
                outcome.append(await dispatcher.run(req_recv, res_send))

    try:
        anyio.run(main)
    except BaseExceptionGroup as group:  # the collector's task group wraps run()'s error
        raise group.exceptions[0] from None
    return (outcome[0] if outcome else None), finished


def _dispatcher(emu: EmulatorProcess, job: Job, **kwargs: Any) -> Dispatcher:
    kwargs.setdefault("backoff", FAST)
    return Dispatcher(job, api_key=KEY, base_url=emu.base_url, **kwargs)


@pytest.fixture(scope="module")
def emulator() -> Any:
    with EmulatorProcess(["--seed", "5"], quiet=True) as emu:
        yield emu


@pytest.fixture
def emu(emulator: EmulatorProcess) -> EmulatorProcess:
    emulator.reset()
    return emulator


class _CountingTransport(httpx.AsyncBaseTransport):
    """The real transport, counting requests between send and the end of their body."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport()
        self.now = self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
        finally:
            self.now -= 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_every_request_is_answered_with_concurrency_never_exceeded() -> None:
    transport = _CountingTransport()
    with EmulatorProcess(["--latency-ms", "40"], quiet=True) as emu:
        counters = Counters()
        d = _dispatcher(emu, _job(concurrency=6), counters=counters, transport=transport)
        outcome, finished = _run(d, _requests(60))
    assert outcome == DispatchOutcome(stopped=None)
    assert sorted(int(r.key) for r, _ in finished) == list(range(60))
    assert all(res.status == "ok" and res.attempts == 1 for _, res in finished)
    assert transport.most == 6
    assert (counters.sent, counters.rows_sent, counters.ok, counters.in_flight) == (60, 60, 60, 0)
    assert counters.cost_usd == pytest.approx(sum(result_cost(PRICE, r) or 0 for _, r in finished))


def test_requests_per_minute_are_never_exceeded() -> None:
    # 1200/min: a small burst then 20/s. The emulator refuses anything above 1200 in 60 s.
    with EmulatorProcess(["--rpm", "1200"], quiet=True) as emu:
        counters = Counters()
        d = _dispatcher(emu, _job(concurrency=32, requests_per_minute=1200), counters=counters)
        start = time.perf_counter()
        _run(d, _requests(200), within=3.0)
        elapsed = time.perf_counter() - start
        ledger = emu.ledger()
    assert ledger["rate_limited"] == 0
    assert ledger["requests_received"] <= 10 + 20 * elapsed
    assert ledger["requests_received"] >= 15 * (elapsed - 0.5)
    assert counters.rpm_limit == 1200


def test_tokens_per_minute_are_never_exceeded() -> None:
    # 30,000 tokens/min = 500/s; each request weighs ~12 prompt + 32 completion tokens,
    # so tokens, not requests, set the pace (~11/s); unpaced, all 200 would go at once.
    # The pace bound is the check: in 3 s nothing can reach the emulator's 60 s limit.
    with EmulatorProcess(["--tpm", "30000"], quiet=True) as emu:
        job = _job(concurrency=32, tokens_per_minute=30000)
        requests = _requests(200)
        weight = max(request.est_tokens for request in requests)
        start = time.perf_counter()
        _run(_dispatcher(emu, job), requests, within=3.0)
        elapsed = time.perf_counter() - start
        ledger = emu.ledger()
    per_s = 30000 / 60 / weight  # requests a second at the heaviest request's weight
    assert ledger["requests_received"] <= per_s * (0.5 + elapsed) + 2  # half a second's burst
    assert ledger["requests_received"] >= 0.8 * per_s * (elapsed - 0.5)


def test_a_429_storm_pauses_all_dispatch_once() -> None:
    # 32 at once against 20/min: the emulator refuses 12 with Retry-After ~60 s.
    with EmulatorProcess(["--rpm", "20"], quiet=True) as emu:
        counters = Counters()
        d = _dispatcher(emu, _job(concurrency=32), counters=counters)
        _run(d, _requests(100), within=3.0)
        ledger = emu.ledger()
    assert ledger["requests_received"] <= 32 + 2  # nobody stampedes during the pause
    assert ledger["rate_limited"] <= 32
    assert counters.rate_limited == ledger["rate_limited"]
    assert d.learned.rpm == 20


def test_a_429_request_is_retried_after_the_one_global_pause() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.perf_counter())
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after-ms": "400"}, json={"error": {}})
        return httpx.Response(200, json=_COMPLETION)

    d = Dispatcher(
        _job(concurrency=1), api_key=KEY, base_url="http://127.0.0.1:9",
        transport=httpx.MockTransport(handler), backoff=FAST,
    )  # fmt: skip
    outcome, finished = _run(d, _requests(3))
    assert outcome == DispatchOutcome()
    assert sorted((r.key, res.attempts) for r, res in finished) == [("0", 2), ("1", 1), ("2", 1)]
    assert calls[1] - calls[0] >= 0.39  # nothing at all was sent during the pause


_COMPLETION = {
    "id": "x",
    "model": "gpt-5.5",
    "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def test_every_kind_of_fault_ends_as_ok_rows_after_retries(caplog: Any) -> None:
    faults = ["--fail-rate", "0.1", "--drop-rate", "0.1", "--stall-rate", "0.05"]
    faults += ["--stall-s", "3", "--truncate-rate", "0.1", "--malformed-rate", "0.1"]
    rows = _requests(40) + [_request(i, stream=True) for i in range(40, 80)]
    caplog.set_level(logging.DEBUG, logger="batchrun.retry")
    with EmulatorProcess(["--seed", "3", *faults], quiet=True) as emu:
        counters = Counters()
        job = _job(concurrency=16, timeout_s=0.5, max_attempts=10)
        _outcome, finished = _run(_dispatcher(emu, job, counters=counters), rows)
        ledger = emu.ledger()
    assert len(finished) == 80
    assert all(res.status == "ok" for _, res in finished)
    assert all(ledger["faults"][kind] > 0 for kind in ("fail", "drop", "stall", "truncate"))
    assert ledger["faults"]["malformed"] > 0
    assert max(res.attempts for _, res in finished) > 1
    assert sum(res.attempts for _, res in finished) == counters.sent == ledger["requests_received"]
    assert counters.retries == counters.sent - 80
    assert len([r for r in caplog.records if r.name == "batchrun.retry"]) == counters.retries
    assert KEY not in caplog.text


def test_a_row_fails_after_max_attempts_with_the_last_error(emu: EmulatorProcess) -> None:
    with EmulatorProcess(["--fail-rate", "1"], quiet=True) as failing:
        _o, finished = _run(_dispatcher(failing, _job(max_attempts=3)), _requests(2))
    assert [(res.status, res.attempts) for _, res in finished] == [("error", 3), ("error", 3)]
    assert all((res.error_type or "").startswith("http_5") for _, res in finished)


def test_a_bad_request_fails_its_row_at_once(emu: EmulatorProcess) -> None:
    rows = [_request(0), _request(1, max_completion_tokens=0), _request(2)]
    _outcome, finished = _run(_dispatcher(emu, _job()), rows)
    by_key = {r.key: res for r, res in finished}
    assert (by_key["1"].status, by_key["1"].attempts) == ("error", 1)
    assert by_key["1"].error_type and by_key["1"].error_message
    assert by_key["0"].status == by_key["2"].status == "ok"


def test_a_refused_key_stops_the_job_having_sent_few_requests() -> None:
    with EmulatorProcess(["--api-key", "sk-the-only-good-one"], quiet=True) as emu:
        d = _dispatcher(emu, _job(concurrency=8))
        start = time.perf_counter()
        with pytest.raises(FatalApiError) as caught:
            _run(d, _requests(500))
        received = emu.ledger()["requests_received"]
    assert time.perf_counter() - start < 5
    assert received <= 8
    assert "Incorrect API key" in str(caught.value) and KEY not in str(caught.value)


def test_an_unknown_model_stops_the_job(emu: EmulatorProcess) -> None:
    with pytest.raises(FatalApiError, match="model"):
        _run(_dispatcher(emu, _job()), [_request(i, model="no-such-model") for i in range(20)])


def test_streamed_results_equal_plain_ones(emu: EmulatorProcess) -> None:
    extra = {"reasoning_effort": "low"}
    _o, plain = _run(_dispatcher(emu, _job()), _requests(10, **extra))
    emu.reset()
    _o, streamed = _run(_dispatcher(emu, _job()), _requests(10, stream=True, **extra))

    def comparable(finished: Finished) -> dict[str, Result]:
        for _, res in finished:
            res.latency_ms = res.completed_at = None
        return {r.key: res for r, res in finished}

    assert comparable(streamed) == comparable(plain)
    assert all(res.reasoning_content for _, res in plain)


def test_limits_are_learned_from_the_headers(emu: EmulatorProcess) -> None:
    with EmulatorProcess(["--rpm", "600", "--tpm", "200000"], quiet=True) as limited:
        counters = Counters()
        d = _dispatcher(limited, _job(), counters=counters)
        _run(d, _requests(5))
    assert (d.learned.rpm, d.learned.tpm, counters.rpm_limit) == (600, 200000, 600)


def test_the_budget_stops_dispatch_before_crossing_it(emu: EmulatorProcess) -> None:
    budget = Budget(0.004, PRICE, spent_before=0.001)
    counters = Counters()
    d = _dispatcher(emu, _job(concurrency=4), budget=budget, counters=counters)
    outcome, finished = _run(d, _requests(100))
    spent = sum(result_cost(PRICE, res) or 0 for _, res in finished)
    assert outcome == DispatchOutcome(stopped="budget")
    assert 0 < len(finished) < 100
    assert 0.001 + spent <= 0.004
    assert budget.spent_usd == pytest.approx(0.001 + spent)
    assert emu.ledger()["requests_billed"] == len(finished)  # nothing paid for was dropped


def test_429s_do_not_use_up_max_attempts() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.perf_counter())
        if len(calls) <= 5:  # five refusals, then an answer
            return httpx.Response(429, headers={"retry-after-ms": "10"}, json={"error": {}})
        return httpx.Response(200, json=_COMPLETION)

    d = Dispatcher(
        _job(concurrency=1, max_attempts=2), api_key=KEY, base_url="http://127.0.0.1:9",
        transport=httpx.MockTransport(handler), backoff=FAST,
    )  # fmt: skip
    _outcome, finished = _run(d, _requests(1))
    [(_, result)] = finished
    assert (result.status, result.attempts) == ("ok", 6)


def test_a_request_larger_than_the_tpm_fails_its_row_unsent(emu: EmulatorProcess) -> None:
    big = _request(0)
    huge = Request("huge", big.body, "v1:huge", 5_000, 32)
    job = _job(concurrency=2, tokens_per_minute=4_000)
    _outcome, finished = _run(_dispatcher(emu, job), [huge, _request(1)])
    results = {r.key: res for r, res in finished}
    assert (results["huge"].status, results["huge"].error_type) == ("error", "too_large_for_limit")
    assert results["huge"].attempts == 0
    assert results["1"].status == "ok"
    assert emu.ledger()["requests_received"] == 1
