"""Dispatcher benchmark against the emulator in its own process.

1. Rate-limit use: emulator ``--rpm 3000 --latency-ms 300``; achieved requests per
   minute as a share of the limit and the share of 429s, with the limit given in the
   job and learned from headers. Targets: >= 97 % (given) / >= 90 % (learned), <= 1 % 429s.
2. Client CPU per completed request at zero latency (5,000 requests, 64 in flight),
   medians of ``--rounds`` interleaved rounds: batchrun's whole run (read CSV, build,
   send, parse, checkpoint, write Parquet) and the Dispatcher alone vs a bare
   httpx-over-aiohttp loop and a bare aiohttp loop (asyncio's own loop, answers read and
   dropped), and httpx's default transport for reference. Targets for the whole run:
   <= 1.3x the first loop and <= 2.5x the second.

    python bench/bench_dispatch.py            # 40 s per rate run
    python bench/bench_dispatch.py --quick    # 12 s per rate run, 2,000 requests
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
from httpx_aiohttp import AiohttpTransport

from batchrun._runner import RunOptions, run_job
from batchrun._types import Request, Result
from batchrun.emulator import EmulatorProcess
from batchrun.engines.loop import EVENT_LOOP
from batchrun.job.config import InputConfig, Job, Limits, OutputConfig, Price, RequestConfig
from batchrun.send.dispatch import Counters, Dispatcher
from batchrun.send.requests import estimate_prompt_tokens

KEY = "sk-bench"
BARE_HTTPX = "bare httpx + AiohttpTransport loop"
BARE_AIOHTTP = "bare aiohttp loop"
PATH = "/v1/chat/completions"


def _body(i: int) -> dict[str, Any]:
    text = f"Sentiment of review {i}: the blender works but it is loud."
    return {
        "model": "gpt-5.5",
        "messages": [{"role": "user", "content": text}],
        "max_completion_tokens": 16,
    }


def _requests(n: int) -> list[Request]:
    bodies = [_body(i) for i in range(n)]
    return [
        Request(str(i), b, f"v1:{i}", estimate_prompt_tokens(b), 16) for i, b in enumerate(bodies)
    ]


def _job(concurrency: int, rpm: int | None) -> Job:
    return Job(
        name="bench",
        input=InputConfig(path="-"),
        request=RequestConfig(model="gpt-5.5", prompt="{text}", max_completion_tokens=16),
        output=OutputConfig(path="-"),
        limits=Limits(concurrency=concurrency, requests_per_minute=rpm, timeout_s=30),
    )


async def _dispatch(base_url: str, job: Job, requests: list[Request], within: float) -> Counters:
    """Run the Dispatcher on ``requests`` (stopping after ``within`` s); drop the results."""
    counters = Counters()
    dispatcher = Dispatcher(job, api_key=KEY, base_url=base_url, counters=counters)
    req_send, req_recv = anyio.create_memory_object_stream[Request](len(requests))
    res_send, res_recv = anyio.create_memory_object_stream[tuple[Request, Result]](1024)
    async with req_send:
        for request in requests:
            req_send.send_nowait(request)

    async def drain() -> None:
        async for _ in res_recv:
            pass

    with anyio.move_on_after(within):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain)
            await dispatcher.run(req_recv, res_send)
    return counters


def rate_use(seconds: float, learned: bool) -> dict[str, Any]:
    limit = 3000
    with EmulatorProcess(["--rpm", str(limit), "--latency-ms", "300"], quiet=True) as emu:
        job = _job(64, None if learned else limit)
        start = time.perf_counter()
        counters = anyio.run(_dispatch, emu.base_url, job, _requests(int(limit * 2)), seconds)
        elapsed = time.perf_counter() - start
        ledger = emu.ledger()
    per_min = counters.ok * 60 / elapsed
    return {
        "case": f"rpm {'learned' if learned else 'in job'}",
        "ok": counters.ok,
        "s": elapsed,
        "rpm": per_min,
        "use": per_min / limit,
        "429": ledger["rate_limited"] / max(ledger["requests_received"], 1),
        "max60": ledger["max_requests_in_60s"],
    }


def _cpu(run: Callable[[], Awaitable[int]], *, batchrun_loop: bool = False) -> tuple[float, int]:
    """CPU microseconds of this process per completed request, and the count.

    Bare loops run on asyncio's own event loop; ``batchrun_loop`` runs on the one
    batchrun itself uses (uvloop where installed).
    """
    options = EVENT_LOOP if batchrun_loop else {"use_uvloop": False}
    cpu = time.process_time()
    done = anyio.run(run, backend_options=options)
    return (time.process_time() - cpu) / done * 1e6, done


async def _bare_httpx(base_url: str, n: int, transport: httpx.AsyncBaseTransport | None) -> int:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(transport=transport, limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with gate:
                response = await client.post(base_url + PATH, json=_body(i), headers=headers)
                await response.aread()

        await asyncio.gather(*(one(i) for i in range(n)))
    return n


async def _bare_aiohttp(base_url: str, n: int) -> int:
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with gate, session.post(base_url + PATH, json=_body(i), headers=headers) as r:
                await r.read()

        await asyncio.gather(*(one(i) for i in range(n)))
    return n


def _pipeline_run(base_url: str, n: int) -> tuple[float, int]:
    """batchrun's whole run (read CSV, build, send, parse, checkpoint, write Parquet)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "rows.csv"
        texts = [_body(i)["messages"][0]["content"] for i in range(n)]
        pacsv.write_csv(pa.table({"text": texts}), source)
        job = Job(
            name="bench",
            input=InputConfig(path=str(source)),
            request=RequestConfig(model="gpt-5.5", prompt="{text}", max_completion_tokens=16),
            output=OutputConfig(path=str(Path(tmp) / "out.parquet")),
            limits=Limits(concurrency=64, timeout_s=30),
            pricing={"gpt-5.5": Price(input=1.25, output=10.0, cached_input=0.125)},
        )
        options = RunOptions(base_url=base_url, api_key=KEY)
        cpu = time.process_time()
        summary = run_job(job, options)
        micros = (time.process_time() - cpu) / summary.sent * 1e6
    return micros, summary.by_status.get("ok", 0)


async def _dispatcher_run(base_url: str, n: int) -> int:
    counters = await _dispatch(base_url, _job(64, None), _requests(n), float("inf"))
    return counters.ok


def _pin(pid: int, cpu: int) -> None:
    """Keep the emulator and this process on separate cores (less noise between runs)."""
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(pid, {cpu})


def cpu_per_request(n: int, rounds: int) -> list[tuple[str, float, int]]:
    """Medians over ``rounds`` rounds, each running every case once, in turn."""
    samples: dict[str, list[float]] = {}
    done: dict[str, int] = {}
    with EmulatorProcess([], quiet=True) as emu:
        _pin(emu.pid, 0)
        _pin(0, 1)
        url = emu.base_url

        def pipeline() -> tuple[float, int]:
            return _pipeline_run(url, n)

        cases: list[tuple[str, Callable[[], tuple[float, int]]]] = [
            ("batchrun run (whole pipeline)", pipeline),
            (
                "Dispatcher alone",
                lambda: _cpu(lambda: _dispatcher_run(url, n), batchrun_loop=True),
            ),
            (BARE_HTTPX, lambda: _cpu(lambda: _bare_httpx(url, n, _aiohttp()))),
            (BARE_AIOHTTP, lambda: _cpu(lambda: _bare_aiohttp(url, n))),
        ]
        asyncio.run(_bare_aiohttp(url, 200))  # warm the emulator up
        for _ in range(rounds):
            for name, case in cases:
                emu.reset()
                micros, done[name] = case()
                samples.setdefault(name, []).append(micros)
        emu.reset()  # once: it is a reference, and slow
        name = "httpx default transport (reference, 1 run)"
        micros, done[name] = _cpu(lambda: _bare_httpx(url, n, None))
        samples[name] = [micros]
    return [(name, statistics.median(values), done[name]) for name, values in samples.items()]


def _aiohttp() -> AiohttpTransport:
    return AiohttpTransport(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--skip-rate", action="store_true", help="only the CPU table")
    parser.add_argument("--rounds", type=int, default=5, help="CPU rounds (medians)")
    args = parser.parse_args()
    seconds, n = (12.0, 2000) if args.quick else (40.0, 5000)

    if not args.skip_rate:
        print(f"Rate-limit use: emulator --rpm 3000 --latency-ms 300, {seconds:g} s runs")
        head = ("case", "ok", "secs", "req/min", "% limit", "% 429", "max/60s")
        print("{:<14} {:>6} {:>6} {:>8} {:>8} {:>6} {:>8}".format(*head))
        for learned in (False, True):
            r = rate_use(seconds, learned)
            print(
                f"{r['case']:<14} {r['ok']:>6} {r['s']:>6.1f} {r['rpm']:>8.0f} "
                f"{r['use']:>8.1%} {r['429']:>6.2%} {r['max60']:>8}"
            )
    print(f"\nClient CPU per completed request: {n} requests, 64 in flight, zero latency")
    print(f"medians of {args.rounds} rounds; emulator on CPU 0, this process on CPU 1")
    rows = cpu_per_request(n, args.rounds)
    base = {name: micros for name, micros, _done in rows}
    base_httpx, base_aiohttp = base[BARE_HTTPX], base[BARE_AIOHTTP]
    print(f"{'client':<44} {'us/req':>8} {'vs httpx+aiohttp':>17} {'vs aiohttp':>11}")
    for name, micros, _done in rows:
        ratios = f"{micros / base_httpx:>16.2f}x {micros / base_aiohttp:>10.2f}x"
        print(f"{name:<44} {micros:>8.0f} {ratios}")


if __name__ == "__main__":
    main()
