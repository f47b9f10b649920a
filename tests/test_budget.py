"""The budget on a virtual clock: the real ``Budget`` and ``Dispatcher`` against a server
that bills at random, so that spend never exceeds the cap is checked over many runs.

The server (an ``httpx.MockTransport``) bills every attempt except 500s; it answers with
usage, without usage, or loses the answer after billing. Its real prompt tokens exceed
the estimate by up to the ratio the budget reserved for (``Budget.prompt_factor``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from batchrun._types import Request, Result
from batchrun.job.config import InputConfig, Job, Limits, OutputConfig, Price, RequestConfig
from batchrun.send.budget import Budget
from batchrun.send.dispatch import Dispatcher, DispatchOutcome
from batchrun.send.ratelimit import Backoff

PRICE = Price(input=1.25, cached_input=0.125, output=10.0)
OUTCOMES = ("usage", "no_usage", "lost", "http_500")


class RecordingBudget(Budget):
    """The real budget, noting the prompt factor each reservation used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.factor_at: dict[str, float] = {}

    def try_reserve(self, request: Request) -> float | None:
        amount = super().try_reserve(request)
        if amount is not None:
            self.factor_at[request.fingerprint] = self.prompt_factor(request)
        return amount


@dataclass
class Server:
    """Bills each attempt from a drawn script; ``billed_usd`` is what it charged."""

    budget: RecordingBudget
    script: list[tuple[str, float, float, float]]  # outcome, prompt share, completion share, s
    billed_usd: float = 0.0
    turn: int = 0
    rows: dict[str, Request] = field(default_factory=dict)

    async def __call__(self, http: httpx.Request) -> httpx.Response:
        request = self.rows[json.loads(http.content)["row"]]
        outcome, prompt_share, completion_share, latency = self.script[self.turn % len(self.script)]
        self.turn += 1
        await anyio.sleep(latency)
        if outcome == "http_500":
            return httpx.Response(500, json={"error": {"message": "boom"}})
        factor = self.budget.factor_at[request.fingerprint]
        prompt = math.floor(request.est_prompt_tokens * factor * prompt_share)
        completion = math.floor(request.max_completion_tokens * completion_share)
        self.billed_usd += PRICE.cost(prompt, 0, completion)
        if outcome == "lost":
            raise httpx.ReadError("connection reset after the answer was billed")
        return httpx.Response(200, json=_answer(prompt, completion, outcome == "usage"))


def _answer(prompt: int, completion: int, usage: bool) -> dict[str, Any]:
    message = {"role": "assistant", "content": "ok"}
    body: dict[str, Any] = {"id": "c", "model": "m", "choices": [{"message": message}]}
    if usage:
        body["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion}
    return body


def _job(cap: float, concurrency: int) -> Job:
    return Job(
        name="budget-property",
        input=InputConfig(path="unused.csv"),
        request=RequestConfig(model="m", prompt="{text}"),
        output=OutputConfig(path="unused.parquet"),
        limits=Limits(concurrency=concurrency, max_attempts=3, max_cost_usd=cap),
        pricing={"m": PRICE},
    )


def _request(i: int, est: int, completion: int, wide: bool) -> Request:
    text = ("評価してください" if wide else "please label this") * (1 + i % 3)
    body = {"row": str(i), "messages": [{"role": "user", "content": text}]}
    return Request(str(i), body, f"v1:{i}", est, completion)


async def _dispatch(dispatcher: Dispatcher, requests: list[Request]) -> DispatchOutcome:
    send, receive = anyio.create_memory_object_stream[Request](len(requests))
    out_send, out_receive = anyio.create_memory_object_stream[tuple[Request, Result]](math.inf)
    async with send:
        for request in requests:
            send.send_nowait(request)
    async with receive, out_receive:
        return await dispatcher.run(receive, out_send)


requests_st = st.lists(
    st.tuples(st.integers(1, 4000), st.integers(1, 4000), st.booleans()), min_size=1, max_size=40
)
script_st = st.lists(
    st.tuples(
        st.sampled_from(OUTCOMES),
        st.floats(0.0, 1.0),
        st.floats(0.0, 1.0),
        st.floats(0.0, 30.0),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=requests_st,
    script=script_st,
    cap=st.floats(0.001, 0.5),
    spent_before=st.floats(0.0, 0.2),
    concurrency=st.integers(1, 8),
)
def test_spend_never_exceeds_the_cap(
    specs: list[tuple[int, int, bool]],
    script: list[tuple[str, float, float, float]],
    cap: float,
    spent_before: float,
    concurrency: int,
) -> None:
    spent_before = min(spent_before, cap)
    requests = [_request(i, est, done, wide) for i, (est, done, wide) in enumerate(specs)]
    budget = RecordingBudget(cap, PRICE, spent_before)
    server = Server(budget, script, rows={r.key: r for r in requests})
    dispatcher = Dispatcher(
        _job(cap, concurrency),
        api_key="sk-x",
        base_url="http://127.0.0.1:9",
        budget=budget,
        transport=httpx.MockTransport(server),
        backoff=Backoff(base_s=0.5, cap_s=2.0),
    )

    outcome = anyio.run(
        _dispatch,
        dispatcher,
        requests,
        backend="trio",
        backend_options={"clock": MockClock(autojump_threshold=0)},
    )

    assert spent_before + server.billed_usd <= cap * (1 + 1e-9)
    # Stop on money: a stop leaves nothing in flight, and the spend it counted covers
    # every billed attempt (real cost, or the worst case when usage never came back).
    assert budget.in_flight == 0 and budget.reserved_usd <= 1e-12
    assert budget.spent_usd >= spent_before + server.billed_usd - 1e-12
    if outcome.stopped is None:
        assert server.turn >= len(requests)
