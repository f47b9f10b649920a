"""How many chat completions per second the emulator serves on one core.

Starts one emulator process pinned to CPU 0, drives it from this process
(pinned to CPU 1 when there is one) with 64 concurrent requests, once per
client: bare ``httpx.AsyncClient``, httpx over ``httpx_aiohttp.AiohttpTransport``,
and plain ``aiohttp``. The server only counts as "not the bottleneck" if the
fastest client is what limits the figure (see the server CPU share printed).

    python bench/bench_emulator.py --requests 20000 --concurrency 64 [--stream]

Baseline (2-core Firecracker VM shared with other jobs, uvloop + httptools,
5 000 requests, 64 concurrent; server CPU = its CPU seconds per wall second):

    json answers     httpx 189 req/s (server CPU 14%), httpx+aiohttp 645 (22%),
                     aiohttp 1503 (39%)
    stream answers   httpx 136 (11%), httpx+aiohttp 473 (20%), aiohttp 949 (34%)

The server is far from saturated in every case: the one-core Python client is
the bottleneck (1503 req/s at 39% CPU extrapolates to ~3 800 req/s per core).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from batchrun.emulator import EmulatorProcess

HEADERS = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
Sender = Callable[[int], Awaitable[None]]


def request_body(index: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-5.5",
        "messages": [
            {"role": "developer", "content": "Classify the sentiment of the review."},
            {"role": "user", "content": f"Review {index}: the product works and I like it."},
        ],
        "response_format": {"type": "json_object"},
        "max_completion_tokens": 256,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def drive(send_one: Sender, requests: int, concurrency: int) -> float:
    """Run ``requests`` sends with ``concurrency`` workers; returns elapsed seconds."""
    next_index = iter(range(requests))

    async def worker() -> None:
        for index in next_index:
            await send_one(index)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return time.perf_counter() - started


async def with_httpx(url: str, args: argparse.Namespace, transport: Any = None) -> float:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    async with httpx.AsyncClient(
        base_url=url, limits=limits, transport=transport, timeout=60
    ) as client:

        async def send_one(index: int) -> None:
            response = await client.post(
                "/v1/chat/completions", json=request_body(index, args.stream), headers=HEADERS
            )
            await response.aread()
            response.raise_for_status()

        return await drive(send_one, args.requests, args.concurrency)


async def with_httpx_aiohttp(url: str, args: argparse.Namespace) -> float:
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    return await with_httpx(url, args, AiohttpTransport(limits=limits))


async def with_aiohttp(url: str, args: argparse.Namespace) -> float:
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:

        async def send_one(index: int) -> None:
            body = request_body(index, args.stream)
            async with session.post("/v1/chat/completions", json=body, headers=HEADERS) as response:
                await response.read()
                response.raise_for_status()

        return await drive(send_one, args.requests, args.concurrency)


CLIENTS = {
    "httpx.AsyncClient": with_httpx,
    "httpx + AiohttpTransport": with_httpx_aiohttp,
    "aiohttp.ClientSession": with_aiohttp,
}


def pin(pid: int, cpu: int) -> None:
    """Give the server and the client a core each, so they do not share one."""
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(pid, {cpu})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stream", action="store_true", help="SSE answers")
    args = parser.parse_args()
    with EmulatorProcess(["--seed", "1"], quiet=True) as emu:
        assert emu.pid is not None
        pin(emu.pid, 0)
        pin(0, 1)
        mode = "stream" if args.stream else "json"
        print(f"{args.requests} requests, {args.concurrency} concurrent, {mode} answers")
        warm_up = argparse.Namespace(**{**vars(args), "requests": min(args.requests, 1000)})
        for name, run in CLIENTS.items():
            asyncio.run(run(emu.base_url, warm_up))
            emu.reset()
            cpu_before = cpu_seconds(emu.pid)
            elapsed = asyncio.run(run(emu.base_url, args))
            server_cpu = (cpu_seconds(emu.pid) - cpu_before) / elapsed
            billed = emu.ledger()["requests_billed"]
            assert billed == args.requests, billed
            rate = args.requests / elapsed
            print(f"{name:<26} {rate:8.0f} req/s   server CPU {server_cpu:4.0%}")


if __name__ == "__main__":
    main()
