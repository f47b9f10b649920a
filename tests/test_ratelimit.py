"""Pacing pieces: header parsing, backoff, the global pause, buckets and adaptation."""

from __future__ import annotations

import random
import time

import anyio
import pytest

from batchrun._ratelimit import (
    Pacer,
    PauseGate,
    RateInfo,
    compute_backoff,
    parse_duration,
    parse_rate_info,
)


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


def test_requests_per_minute_bucket_paces_sends() -> None:
    # 6000/min is 100/s; in 1 s at most the small burst plus one second of flow may pass.
    async def main() -> int:
        pacer = Pacer(rpm=6000, tpm=None)
        sent = 0
        with anyio.move_on_after(1.0):
            while True:
                await pacer.acquire(10)
                sent += 1
        return sent

    sent = anyio.run(main)
    assert 135 <= sent <= 6000 * 0.5 / 61 + 100 + 1  # burst (half a second) + 1 s of flow


def test_tokens_bucket_takes_a_request_heavier_than_itself() -> None:
    async def main() -> float:
        pacer = Pacer(rpm=None, tpm=60_000)  # 1000 tokens/s, bucket ~500
        start = time.perf_counter()
        await pacer.acquire(900)
        await pacer.acquire(900)
        return time.perf_counter() - start

    assert 1.0 <= anyio.run(main) < 2.5


def test_limits_are_learned_from_headers_and_never_raise_a_configured_one() -> None:
    async def main() -> tuple[float | None, float | None]:
        learned = Pacer(rpm=None, tpm=None)
        learned.observe(RateInfo(limit_requests=1200))
        capped = Pacer(rpm=600, tpm=None)
        capped.observe(RateInfo(limit_requests=1200))
        return learned.rpm_in_use, capped.rpm_in_use

    assert anyio.run(main) == (1200, 600)


def test_a_silent_429_halves_the_pace_once_and_successes_win_it_back() -> None:
    async def main() -> list[float | None]:
        pacer = Pacer(rpm=1000, tpm=None)
        sent_at = time.monotonic()
        pacer.throttled(sent_at)
        pacer.throttled(sent_at)  # same burst: not halved again
        after_cut = pacer.rpm_in_use
        for _ in range(250):
            pacer.succeeded()
        return [after_cut, pacer.rpm_in_use]

    after_cut, recovered = anyio.run(main)
    assert after_cut == 500
    assert recovered == pytest.approx(750)


def test_a_silent_429_without_known_limits_halves_the_observed_pace() -> None:
    async def main() -> float | None:
        pacer = Pacer(rpm=None, tpm=None)
        for _ in range(120):
            await pacer.acquire(1)
        pacer.throttled(time.monotonic())
        return pacer.rpm_in_use

    rpm = anyio.run(main)
    assert rpm is not None and rpm <= 120 * 60 / 2
