"""Pacing pieces: header parsing, backoff, the global pause; the Pacer on a virtual clock.

The Pacer is driven by trio's ``MockClock``: time jumps to the next deadline whenever
every task waits, so simulated minutes take milliseconds and never flake.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from batchrun._errors import PermanentError
from batchrun._types import Request, Result
from batchrun.send.headers import RateInfo, parse_duration, parse_rate_info
from batchrun.send.ratelimit import SPAN_S, Pacer, PauseGate, compute_backoff


def _parse(headers: dict[str, str]) -> RateInfo:
    return parse_rate_info([(k.encode(), v.encode()) for k, v in headers.items()])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("7", 7.0), ("", None)],
)
def test_durations_in_openai_format(text: str, seconds: float | None) -> None:
    assert (
        parse_duration(text) == pytest.approx(seconds) if seconds else parse_duration(text) is None
    )


def test_garbage_duration_is_unknown() -> None:
    assert parse_duration("soon") is None


def test_rate_headers_are_parsed() -> None:
    info = _parse(
        {
            "x-ratelimit-limit-requests": "3000",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "20ms",
            "x-ratelimit-limit-tokens": "100000",
        }
    )
    assert (info.limit_requests, info.limit_tokens, info.remaining_requests) == (3000, 100000, 0)
    assert info.exhausted_for_s() == pytest.approx(0.02)


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert _parse({"Retry-After": "3", "retry-after-ms": "250"}).pause_s() == 0.25
    assert _parse({"retry-after": "3"}).pause_s() == 3.0


def test_backoff_grows_exponentially_under_full_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    waits = [compute_backoff(n, rng, base_s=0.5, cap_s=20) for n in range(1, 200)]
    assert all(0 <= w <= 20 for w in waits)
    assert max(compute_backoff(1, rng, base_s=0.5, cap_s=20) for _ in range(100)) <= 0.5
    assert max(waits[10:]) > 10  # late attempts reach far towards the cap


def test_backoff_is_a_pure_function_of_attempt_and_rng() -> None:
    a = compute_backoff(4, random.Random(7), base_s=0.5, cap_s=20)
    assert a == compute_backoff(4, random.Random(7), base_s=0.5, cap_s=20)


def test_pause_gate_holds_every_waiter_until_one_deadline() -> None:
    woke: list[float] = []

    async def main() -> None:
        gate = PauseGate()
        assert gate.pause_for(0.2)
        assert not gate.pause_for(0.1)  # a shorter pause does not cut the longer one
        start = time.monotonic()

        async def waiter() -> None:
            await gate.wait()
            woke.append(time.monotonic() - start)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(waiter)
        assert gate.is_open

    anyio.run(main)
    assert len(woke) == 20 and min(woke) >= 0.19 and max(woke) < 0.4


def test_vendor_and_dated_retry_headers_are_read() -> None:
    assert _parse({"llm_provider-retry-after": "60"}).pause_s() == 60.0
    assert _parse({"retry-after": "2", "llm_provider-retry-after": "60"}).pause_s() == 2.0
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (_parse({"Retry-After": soon}).pause_s() or 0) <= 30
    assert _parse({"x-ratelimit-reset": "12"}).pause_s() == 12.0
    epoch = str(int(time.time()) + 20)
    assert 18 <= (_parse({"x-ratelimit-reset": epoch}).pause_s() or 0) <= 20
    spent = _parse({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset": "5"})
    assert spent.exhausted_for_s() == 5.0


# -- the Pacer on a virtual clock ------------------------------------------------------

Sends = list[tuple[float, int]]


def _virtual(main: Callable[[], Awaitable[Any]]) -> Any:
    clock = MockClock(autojump_threshold=0)
    return anyio.run(main, backend="trio", backend_options={"clock": clock})


def _pacer(rpm: int | None, tpm: int | None) -> Pacer:
    return Pacer(rpm, tpm, clock=trio.current_time)


async def _drive(pacer: Pacer, sizes: Sequence[int], workers: int, seconds: float) -> Sends:
    """``workers`` tasks acquire in a loop (sends take no time), sizes in turn, until then."""
    sends: Sends = []

    async def worker(first: int) -> None:
        for n in range(first, 10**9, workers):
            size = sizes[n % len(sizes)]
            sends.append((await pacer.acquire(size), size))

    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as tg:
            for i in range(workers):
                tg.start_soon(worker, i)
    return sends


def window_maxima(sends: Sends, window: float = 60.0) -> tuple[int, int]:
    """The most requests and the most tokens sent in any rolling ``window`` seconds."""
    sends = sorted(sends)
    first = count = tokens = most_n = most_t = 0
    for at, size in sends:
        count, tokens = count + 1, tokens + size
        while sends[first][0] <= at - window:
            count, tokens, first = count - 1, tokens - sends[first][1], first + 1
        most_n, most_t = max(most_n, count), max(most_t, tokens)
    return most_n, most_t


def steady_use(sends: Sends, rpm: int | None, tpm: int | None, after: float = 60.0) -> float:
    """Pace after the first minute against the binding limit, request by request.

    Each request needs ``max(60/rpm, 60*size/(tpm - largest))`` seconds of the limits (a
    window cannot always be filled exactly: a request may not fit in what is left); this
    is the time those requests needed over the time they took.
    """
    late = sorted(s for s in sends if s[0] >= after)
    largest = max(size for _, size in sends)
    usable = (tpm - largest + 1) if tpm else None
    needed = sum(
        max(60 / rpm if rpm else 0.0, 60 * size / usable if usable else 0.0)
        for _, size in late[:-1]
    )
    return needed / (late[-1][0] - late[0][0])


REPORT: list[dict[str, Any]] = []  # what the property test saw, for the closing note


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rpm=st.none() | st.integers(1, 600),
    tpm=st.none() | st.integers(2_000, 4_000_000),
    fractions=st.lists(st.floats(0.0001, 1.0), min_size=1, max_size=5),
    workers=st.integers(1, 256),
)
def test_no_window_exceeds_a_limit_and_the_pace_stays_at_the_limit(
    rpm: int | None, tpm: int | None, fractions: list[float], workers: int
) -> None:
    if rpm is None and tpm is None:
        rpm = 60
    # Sizes up to the whole TPM (many above TPM / workers); at most ~3,000 sends in 5 min.
    cap = tpm or 200_000
    floor = max(1, int(cap * 300 / 60 / 3000))
    sizes = [max(floor, min(cap, int(cap * f))) for f in fractions]
    seconds = 300.0

    sends = _virtual(lambda: _drive(_pacer(rpm, tpm), sizes, workers, seconds))
    most_n, most_t = window_maxima(sends)
    use = steady_use(sends, rpm, tpm) if len([s for s in sends if s[0] >= 60]) > 2 else 1.0
    REPORT.append({"rpm": rpm, "tpm": tpm, "max_n": most_n, "max_t": most_t, "use": use})
    assert rpm is None or most_n <= rpm
    assert tpm is None or most_t <= tpm
    assert use >= 0.97


@pytest.mark.parametrize(
    ("rpm", "tpm", "sizes", "workers"),
    [
        (None, 2_000_000, [128_000], 64),  # was 7.07M tokens in one window
        (None, 200_000, [4_596], 64),  # was 1.47x
        (60, None, [2_000, 100], 64),  # was 87 sends in 60 s
        (150, 200_000, [4_600] * 64 + [200] * 80, 64),
    ],
)
def test_the_issue_cases_keep_every_window_under_the_limits(
    rpm: int | None, tpm: int | None, sizes: list[int], workers: int
) -> None:
    sends = _virtual(lambda: _drive(_pacer(rpm, tpm), sizes, workers, 600.0))
    most_n, most_t = window_maxima(sends)
    assert rpm is None or most_n <= rpm
    assert tpm is None or most_t <= tpm
    assert steady_use(sends, rpm, tpm) >= 0.97


def test_a_burst_then_an_even_pace() -> None:
    # 6000/min: half a second's worth at once, then 60/60.5 of 100 a second.
    sends = _virtual(lambda: _drive(_pacer(6000, None), [10], 32, 10.0))
    at_start = sum(1 for at, _ in sends if at == 0.0)
    assert 45 <= at_start <= 51
    assert len(sends) == pytest.approx(at_start + 10 * 6000 / SPAN_S, abs=2)


def test_a_request_larger_than_the_whole_tpm_is_refused_never_admitted() -> None:
    async def main() -> None:
        pacer = _pacer(None, 10_000)
        await pacer.acquire(10_000)  # exactly the limit: fits, alone in a window
        with pytest.raises(PermanentError) as refused:
            await pacer.acquire(10_001)
        assert refused.value.error_type == "too_large_for_limit"

    _virtual(main)


def test_limits_are_learned_from_headers_and_never_raise_a_configured_one() -> None:
    learned = Pacer(rpm=None, tpm=None)
    learned.observe(RateInfo(limit_requests=1200))
    capped = Pacer(rpm=600, tpm=None)
    capped.observe(RateInfo(limit_requests=1200))
    assert (learned.rpm_in_use, capped.rpm_in_use) == (1200, 600)


def test_waiting_requests_move_to_a_new_pace_at_once() -> None:
    # Queued at 6/min (one per ~10 s); at t=30 the API states 600/min: the queue drains
    # at the new pace at once, not after the old pace's wait.
    async def main() -> Sends:
        pacer = _pacer(None, None)
        pacer.observe(RateInfo(limit_requests=6))

        async def raise_limit() -> None:
            await anyio.sleep(30)
            pacer.observe(RateInfo(limit_requests=600))

        async with anyio.create_task_group() as tg:
            tg.start_soon(raise_limit)
            return await _drive(pacer, [1], 16, 40.0)

    sends = _virtual(main)
    after = [at for at, _ in sends if at >= 30]
    assert after and after[0] < 30.2
    assert len(after) >= 90  # ~10 s at 600/min
    assert window_maxima(sends)[0] <= 600


def test_429s_from_one_burst_are_one_event_and_the_stated_limit_returns_after_a_pause() -> None:
    async def main() -> tuple[float | None, list[float]]:
        pacer = _pacer(None, None)
        pacer.observe(RateInfo(limit_requests=600))
        burst = await _drive(pacer, [1], 16, 1.0)
        for at, _ in burst:  # every request of the burst drew a bare 429
            pacer.throttled(at)
        rate = pacer.rpm_in_use
        sends = await _drive(pacer, [1], 16, 11.0)
        return rate, [at for at, _ in sends]

    rate, sends = _virtual(main)
    assert rate == 600  # one event: no halving, the stated limit stands
    assert 1.9 <= sends[0] <= 2.1  # one brief pause (1 s), not one per 429
    assert len(sends) == pytest.approx(10 * 600 / SPAN_S, abs=3)  # then the whole limit


def test_a_bare_429_without_stated_limits_recovers_within_a_minute_by_time() -> None:
    # No limits known: 120 sends in the minute that drew the 429. The pace restarts at half
    # of 0.9 of that and is back at 0.9 of it within RECOVER_S, without any success.
    async def main() -> tuple[Sends, Sends]:
        pacer = _pacer(None, None)
        pacer.observe(RateInfo(limit_requests=120))
        first = await _drive(pacer, [1], 8, 60.0)
        pacer.learned.rpm = pacer._requests.learned = None  # as if never stated
        pacer.throttled(first[-1][0])
        return first, await _drive(pacer, [1], 8, 120.0)

    first, later = _virtual(main)
    start = later[0][0]
    early = [at for at, _ in later if at < start + 10]
    settled = [at for at, _ in later if start + 40 <= at < start + 100]
    assert start >= first[-1][0] + 1  # paused first
    assert len(early) <= 0.7 * 108 * 10 / 60 + 2  # well under the estimate at first
    assert len(settled) >= 0.97 * 108 * 60 / SPAN_S - 1  # back at ~0.9 of the old pace


def test_repeated_429s_pause_longer_but_halve_nothing_when_the_limit_is_stated() -> None:
    async def main() -> list[float]:
        pacer = _pacer(None, None)
        pacer.observe(RateInfo(limit_requests=600))
        resumes = []
        for _ in range(5):
            sent = await pacer.acquire(1)
            pacer.throttled(sent)
            resumes.append(await pacer.acquire(1) - sent)
        return resumes

    assert _virtual(main) == pytest.approx([1, 2, 2, 2, 2], abs=0.01)


def test_tokens_are_paced_by_what_the_api_counts_when_it_counts_real_usage() -> None:
    # 1M TPM, 128k reserved per request, 200 tokens really used: after the API shows it
    # counts real tokens (remaining barely moves), the reservations are given back.
    async def main() -> tuple[int, int]:
        pacer = _pacer(None, 1_000_000)
        request = Request("r", {}, "f", 100, 128_000)
        answer = Result("ok", prompt_tokens=100, completion_tokens=100)
        before = len(await _drive(pacer, [request.est_tokens], 4, 60.0))
        pacer.observe(RateInfo(limit_tokens=1_000_000, remaining_tokens=990_000))
        sends = 0
        with anyio.move_on_after(60.0):
            while True:
                sent_at = await pacer.acquire(request.est_tokens)
                pacer.reconcile(request, answer, sent_at)
                sends += 1
        return before, sends

    before, after = _virtual(main)
    assert before <= 8  # 1M / 128,100 per window
    assert after >= 1000
