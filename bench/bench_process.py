"""Per-row CPU of the whole `batchrun run` process against a plain aiohttp process.

    python bench/bench_process.py                 # 20,000 rows, 5 interleaved rounds
    python bench/bench_process.py --rows 5000 --rounds 7
    python bench/bench_process.py --tree /path/to/old/checkout --tree .   # A/B, interleaved

The emulator runs once, in its own process (0 ms latency, no limits), pinned to CPU 0;
the children run on CPU 1. Each round runs, one after the other:

- ``batchrun``: ``python -m batchrun run job.toml`` (a CSV of ``--rows`` rows, 64 in
  flight, no retries needed), its checkpoint and output deleted before the round;
  (with ``--tree``, once per checkout named, each with ``PYTHONPATH`` set to it);
- ``aiohttp``: a plain script (asyncio's own loop) that reads the same CSV with the
  ``csv`` module, sends the same bodies with 64 in flight to the same server and
  json-decodes each answer.

CPU is user + system time of the child alone, start-up included (``os.wait4``'s rusage);
the emulator's is not counted. Medians per process, per row, peak RSS and the ratio.
Target: batchrun ≤ 1.6 × aiohttp at 20,000 rows.
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

from batchrun.emulator import EmulatorProcess

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


def measure(command: list[str], cwd: Path, tree: str | None = None) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + sys) and peak RSS (MB) of one child process."""
    env = {**os.environ, "MODELSTREAM_API_KEY": KEY}
    if tree is not None:
        env["PYTHONPATH"] = tree
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


def run_rounds(workdir: Path, rounds: int, trees: list[str]) -> dict[str, list[dict[str, float]]]:
    with EmulatorProcess([], quiet=True) as emu:
        assert emu.pid is not None
        _pin(emu.pid, 0)
        _pin(0, 1)  # the children inherit it
        base_url = f'api.base_url="{emu.base_url}"'
        run = [sys.executable, "-m", "batchrun", "run", "job.toml", "--set", base_url]
        todo: dict[str, tuple[list[str], str | None]] = {}
        for tree in trees or [None]:
            todo["batchrun" if tree is None else f"batchrun {tree}"] = (run, tree)
        todo["aiohttp"] = ([sys.executable, "plain.py", emu.base_url, "input.csv"], None)
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in todo}
        for _ in range(rounds + 1):  # the first round warms up (.pyc, page cache), unkept
            for name, (command, tree) in todo.items():
                fresh(workdir)
                emu.reset()
                result = measure(command, workdir, tree)
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
    print(f"{rows:,} rows, 64 in flight, 0 ms latency; medians of {len(figures['aiohttp'])}")
    width = max(len(name) for name in med)
    head = ("process", "CPU s", "us/row", "RSS MB", "wall s", "requests", "vs aiohttp")
    print(f"{head[0]:<{width}} " + "{:>8} {:>8} {:>8} {:>8} {:>9} {:>10}".format(*head[1:]))
    base = med["aiohttp"]["cpu_s"]
    for name, m in med.items():
        print(
            f"{name:<{width}} {m['cpu_s']:8.3f} {m['cpu_s'] / rows * 1e6:8.0f} "
            f"{m['rss_mb']:8.1f} {m['wall_s']:8.2f} {m['requests']:9.0f} "
            f"{m['cpu_s'] / base:9.2f}x"
        )
    for name, runs in figures.items():
        per_round = " ".join(f"{r['cpu_s']:.2f}" for r in runs)
        print(f"  {name} CPU s per round: {per_round}")
    print("target: batchrun CPU <= 1.6x aiohttp at 20,000 rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--tree", action="append", default=[], help="a checkout to run batchrun from (repeatable)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_input(workdir, args.rows)
        trees = [str(Path(tree).resolve()) for tree in args.tree]
        figures = run_rounds(workdir, args.rounds, trees)
    report(figures, args.rows)


if __name__ == "__main__":
    main()
