"""Ray engine: rows/s and rate-limit use with 1, 2 and 4 workers, next to the local engine.

    python bench/bench_ray.py [--rows 3000] [--rpm 12000] [--latency-ms 50]

Every run sends the same rows to a fresh emulator that enforces ``--rpm`` (the job asks
for the same limit). "limit use" is the busiest 60 s of requests (the emulator's
ledger) as a share of the limit, or, for runs shorter than a minute, the mean rate over
the run as a share of it. 429s > 0 would mean the workers together overshot the limit.
Ray starts once (not timed); each Ray run's wall time includes starting its actors.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun._runner import RunOptions, run_job
from batchrun.emulator import EmulatorProcess
from batchrun.job.load import load_job

KEY = "sk-bench-ray"
JOB = """\
[job]
name = "bench-ray"
[input]
path = "{input}"
id_column = "id"
[request]
model = "gpt-5.5"
prompt = "Label: {{text}}"
max_completion_tokens = 16
[limits]
concurrency = 64
requests_per_minute = {rpm}
[output]
path = "{output}"
[pricing."gpt-5.5"]
input = 1.25
output = 10.0
"""


def write_input(directory: Path, rows: int) -> Path:
    """``rows`` rows of ``id`` and ``text`` in ``in.parquet`` (also ``bench_ray_start``'s)."""
    path = directory / "in.parquet"
    ids = [f"r{i:06d}" for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "text": [f"row {i}" for i in range(rows)]}), path)
    return path


def _one(directory: Path, source: Path, args: argparse.Namespace, workers: int | None) -> str:
    name = "local" if workers is None else f"ray x{workers}"
    out = directory / f"{name.replace(' ', '_')}.parquet"
    job_file = directory / f"{out.stem}.toml"
    job_file.write_text(JOB.format(input=source, output=out, rpm=args.rpm))
    emulator = ["--rpm", str(args.rpm), "--latency-ms", str(args.latency_ms), "--seed", "1"]
    with EmulatorProcess(emulator, quiet=True) as emu:
        engine = "local" if workers is None else "ray"
        options = RunOptions(base_url=emu.base_url, api_key=KEY, engine=engine, ray_workers=workers)
        started = time.monotonic()
        summary = run_job(load_job(job_file), options)
        wall = time.monotonic() - started
        ledger = emu.ledger()
    assert summary.exit_code == 0, summary
    busiest = ledger["max_requests_in_60s"]
    use = busiest / args.rpm if wall >= 60 else (ledger["requests_received"] / wall * 60) / args.rpm
    return (
        f"{name:>9}  {args.rows / wall:8.1f} rows/s  {wall:6.1f} s  limit use {use:5.0%}"
        f"  busiest 60 s {busiest:6d}/{args.rpm}  429s {ledger['rate_limited']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--rpm", type=int, default=12000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from batchrun.engines.ray.engine import ray_session

    limit = f"limit {args.rpm} rpm, {args.latency_ms:.0f} ms latency"
    print(f"{args.rows} rows, {limit}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp, ray_session(None):
        directory = Path(tmp)
        source = write_input(directory, args.rows)
        print(_one(directory, source, args, None), flush=True)
        for workers in (int(n) for n in args.workers.split(",")):
            print(_one(directory, source, args, workers), flush=True)


if __name__ == "__main__":
    sys.exit(main())
