"""``batchrun status`` on a finished 1M-row job: wall time and CPU of the command.

    python bench/bench_status.py                  # 1,000,000 rows
    python bench/bench_status.py --rows 200000 --workdir /tmp/st

The state (input, checkpoint with every answer, done batches, output) is built in bulk
by ``bench_resume.build_state``, as a finished run leaves it (kept in ``--workdir`` for
the next time). Then ``batchrun status``
runs ``--rounds`` times in a fresh process each (``/usr/bin/time``-style figures from
``os.wait4``); the baseline is a process that only imports batchrun's CLI.
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

sys.path.insert(0, str(Path(__file__).parent))

from bench_resume import build_state, make_input, write_job

from batchrun.emulator import EmulatorProcess


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL)
    _, code, usage = os.wait4(child.pid, 0)
    assert code == 0, f"{command} exited {code}"
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_status_"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "input.parquet"
    make_input(source, args.rows)
    with EmulatorProcess([], quiet=True) as emu:
        job = write_job(workdir, "status", source, emu.base_url)
    if not Path(f"{workdir / 'status.out.parquet'}.ckpt.sqlite").exists():
        built = build_state(job, workdir)
        print(f"state of {args.rows:,} rows built in {built['wall_s']:.1f} s", file=sys.stderr)
    status = [sys.executable, "-m", "batchrun", "status", str(job), "--format", "json"]
    baseline = [sys.executable, "-c", "import batchrun.cli"]
    figures = {"status": [], "import": []}  # type: dict[str, list[tuple[float, float]]]
    for _ in range(args.rounds):
        figures["status"].append(timed(status, workdir))
        figures["import"].append(timed(baseline, workdir))
    print(f"rows {args.rows:,}, {args.rounds} rounds, medians (load {os.getloadavg()[0]:.1f})")
    for name, runs in figures.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"  {name:8} wall {wall:.2f} s, CPU {cpu:.2f} s")


if __name__ == "__main__":
    main()
