"""Ray engine start-up: where the seconds go from ``batchrun run --engine ray`` to the
first request the API receives, and to the end of the run.

    python bench/bench_ray_start.py [--rows 3000] [--workers 2] [--rounds 2]
        [--tree /path/to/other/checkout]

Each round runs the real CLI in a fresh process (it starts its own local Ray) against a
fresh emulator (12,000 RPM, 50 ms latency; the job asks for the same limit). The times
are seconds after the process started: the driver's log line "Ray start-up" gives the
steps (Ray ready, coordinator, worker processes, the first batch at a worker, its first
sends, the first rows back at the driver), the emulator's ledger the first request it
received. ``--tree`` runs another checkout's batchrun (the emulator stays this one's):
a tree without the log line shows only the first request and the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_ray import JOB, write_input  # the same job and input as the steady-state bench

from batchrun.emulator import EmulatorProcess

KEY = "sk-bench-ray-start"
STEP = re.compile(r"(?P<step>[A-Za-z][A-Za-z ]*?) (?P<first>[\d.]+)(?:-(?P<last>[\d.]+))?$")


def _round(directory: Path, args: argparse.Namespace, n: int) -> dict[str, str]:
    job = directory / f"job{n}.toml"
    out = directory / f"out{n}.parquet"
    job.write_text(JOB.format(input=directory / "in.parquet", output=out, rpm=args.rpm))
    emulator = ["--rpm", str(args.rpm), "--latency-ms", "50", "--seed", "1"]
    tree = args.tree or str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "MODELSTREAM_API_KEY": KEY, "PYTHONPATH": tree}
    with EmulatorProcess(emulator, quiet=True) as emu:
        command = [sys.executable, "-m", "batchrun", "run", str(job), "--engine", "ray"]
        command += ["--ray-workers", str(args.workers), "--set", f'api.base_url="{emu.base_url}"']
        started = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        ended = time.time()
        ledger = emu.ledger()
    if os.environ.get("BENCH_SHOW"):
        print(done.stderr[-3000:])
    if done.returncode != 0:
        raise SystemExit(f"exit {done.returncode}:\n{done.stderr[-2000:]}")
    steps = _steps(done.stderr)
    steps["first request at the API"] = f"{ledger['first_received_at'] - started:.1f}"
    steps["run ended"] = f"{ended - started:.1f}"
    return steps


def _steps(stderr: str) -> dict[str, str]:
    """The driver's "Ray start-up" log line as {step: "first[-last]"} (seconds)."""
    line = next((ln for ln in stderr.splitlines() if "Ray start-up" in ln), "")
    steps = {}
    for part in line.partition("started: ")[2].split(", "):
        if match := STEP.match(part.strip()):
            last = match["last"]
            steps[match["step"]] = match["first"] + (f"-{last}" if last else "")
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rpm", type=int, default=12000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tree", help="another checkout's batchrun (default: this one)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"{args.rows} rows, {args.workers} workers, {args.rpm} RPM; load {load:.1f}")
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        directory = Path(tmp)
        write_input(directory, args.rows)
        rounds = [_round(directory, args, n) for n in range(args.rounds)]
    steps = list(dict.fromkeys(step for r in rounds for step in r))
    order = sorted(steps, key=lambda s: float(rounds[0].get(s, "1e9").split("-")[0]))
    print(
        f"{'seconds after the process started':40s}"
        + "".join(f"{f'#{n}':>12s}" for n in range(len(rounds)))
    )
    for step in order:
        print(f"{step:40s}" + "".join(f"{r.get(step, '-'):>12s}" for r in rounds))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
