"""Per-row CPU of the whole `batchrun run` process against a plain aiohttp process.

    python bench/bench_process.py                 # 20,000 rows, 5 interleaved rounds
    python bench/bench_process.py --rows 5000 --rounds 7

The emulator runs once, in its own process (0 ms latency, no limits), pinned to CPU 0;
the children run on CPU 1. Each round runs, one after the other:

- ``batchrun``: ``python -m batchrun run job.toml`` (a CSV of ``--rows`` rows, 64 in
  flight, no retries needed), its checkpoint and output deleted before the round;
- ``aiohttp``: a plain script (asyncio's own loop) that reads the same CSV with the
  ``csv`` module, sends the same bodies with 64 in flight to the same server and
  json-decodes each answer.

CPU is user + system time of the child alone, start-up included (``os.wait4``'s rusage);
the emulator's is not counted. Medians per process, per row, peak RSS and the ratio.
Target (issue 14): batchrun ≤ 1.6 × aiohttp at 20,000 rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchrun._emulator import EmulatorProcess

KEY = "sk-bench"
JOB = """\
[job]
name = "bench-process"
[input]
path = "input.csv"
id_column = "id"
[request]
model = "gpt-5.5"
prompt = "Sentiment of this review: {text}"
max_completion_tokens = 16
[limits]
concurrency = 64
[output]
path = "out.parquet"
[pricing."gpt-5.5"]
input = 1.25
cached_input = 0.125
output = 10.0
"""

PLAIN = """\
import asyncio, csv, json, os, sys
import aiohttp

async def main(url, path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    headers = {"Authorization": "Bearer " + os.environ["MODELSTREAM_API_KEY"]}
    gate = asyncio.Semaphore(64)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one(row):
            body = {
                "model": "gpt-5.5",
                "messages": [
                    {"role": "user", "content": "Sentiment of this review: " + row["text"]}
                ],
                "max_completion_tokens": 16,
            }
            async with gate, session.post(url, json=body, headers=headers) as r:
                answer = json.loads(await r.read())
                assert answer["choices"], answer
        await asyncio.gather(*(one(row) for row in rows))

asyncio.run(main(sys.argv[1] + "/v1/chat/completions", sys.argv[2]))
"""


def measure(command: list[str], cwd: Path) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + sys) and peak RSS (MB) of one child process."""
    env = {**os.environ, "MODELSTREAM_API_KEY": KEY}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its .pyc files
    started = time.perf_counter()
    child = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert child.stderr is not None
    errors = child.stderr.read()  # non-TTY: a log line every 5 s, and the summary
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{command} exited {code}: {errors.decode()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, "rss_mb": usage.ru_maxrss / 1024}


def write_input(workdir: Path, rows: int) -> None:
    lines = ["id,text"]
    for i in range(rows):
        lines.append(f"r{i},the blender number {i} works but it is loud and the lid leaks")
    (workdir / "input.csv").write_text("\n".join(lines) + "\n")
    (workdir / "job.toml").write_text(JOB)
    (workdir / "plain.py").write_text(PLAIN)


def fresh(workdir: Path) -> None:
    """No checkpoint or output from the last round: every row is sent again."""
    for path in workdir.iterdir():
        if path.name.startswith(("out.parquet", ".out.parquet")) or path.suffix == ".sqlite":
            if path.is_dir():
                continue
            path.unlink()


def _pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(pid, {cpu})


def run_rounds(workdir: Path, rounds: int) -> dict[str, list[dict[str, float]]]:
    figures: dict[str, list[dict[str, float]]] = {"batchrun": [], "aiohttp": []}
    with EmulatorProcess([], quiet=True) as emu:
        assert emu.pid is not None
        _pin(emu.pid, 0)
        _pin(0, 1)  # the children inherit it
        base_url = f'api.base_url="{emu.base_url}"'
        todo = {
            "batchrun": [sys.executable, "-m", "batchrun", "run", "job.toml", "--set", base_url],
            "aiohttp": [sys.executable, "plain.py", emu.base_url, "input.csv"],
        }
        for _ in range(rounds + 1):  # the first round warms up (.pyc, page cache), unkept
            for name, command in todo.items():
                fresh(workdir)
                emu.reset()
                result = measure(command, workdir)
                ledger = emu.ledger()
                result["requests"] = ledger["requests_received"]
                figures[name].append(result)
    return {name: rows[1:] for name, rows in figures.items()}


def report(figures: dict[str, list[dict[str, float]]], rows: int) -> None:
    med = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in figures.items()
    }
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{rows:,} rows, 64 in flight, 0 ms latency; medians of {len(figures['batchrun'])}")
    head = ("process", "CPU s", "us/row", "RSS MB", "wall s", "requests")
    print("{:<10} {:>8} {:>8} {:>8} {:>8} {:>9}".format(*head))
    for name, m in med.items():
        print(
            f"{name:<10} {m['cpu_s']:8.3f} {m['cpu_s'] / rows * 1e6:8.0f} "
            f"{m['rss_mb']:8.1f} {m['wall_s']:8.2f} {m['requests']:9.0f}"
        )
    for name, runs in figures.items():
        per_round = " ".join(f"{r['cpu_s']:.2f}" for r in runs)
        print(f"  {name} CPU s per round: {per_round}")
    ratio = med["batchrun"]["cpu_s"] / med["aiohttp"]["cpu_s"]
    print(f"batchrun CPU / aiohttp CPU: {ratio:.2f}x (target <= 1.6x at 20,000 rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_input(workdir, args.rows)
        figures = run_rounds(workdir, args.rounds)
    report(figures, args.rows)


if __name__ == "__main__":
    main()
