"""Start-up cost: `batchrun run` of a 1-row job and `batchrun --help`, against a bare import.

    python bench/bench_startup.py               # 9 interleaved rounds, medians
    python bench/bench_startup.py --rounds 15

Each round runs, one after another (so load from other processes hits all alike):

- ``bare``: ``python -c "import pyarrow, pyarrow.csv, pyarrow.parquet, httpx, aiohttp,
  anyio, uvloop"``: what a run cannot do without (the baseline);
- ``run``: ``python -m batchrun run job.toml --fresh --quiet`` of a 1-row CSV job against
  the emulator (started once, outside the figures), output Parquet and checkpoint written;
- ``help``: ``python -m batchrun --help``.

CPU is user + system time of the child alone (``os.wait4``'s rusage), RSS its peak
(``ru_maxrss``). Targets: run CPU ≤ 1.35 × bare, run RSS ≤ 110 MB,
``--help`` ≤ 0.15 s wall.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

# One child process (wall, CPU by os.wait4, peak RSS), and the same job as bench_process's.
from bench_process import JOB, measure

from batchrun.emulator import EmulatorProcess

BARE = "import pyarrow, pyarrow.csv, pyarrow.parquet, httpx, aiohttp, anyio, uvloop"


def commands(emu: EmulatorProcess) -> dict[str, list[str]]:
    base_url = f'api.base_url="{emu.base_url}"'
    run = ["run", "job.toml", "--fresh", "--quiet", "--set", base_url]
    return {
        "bare": [sys.executable, "-c", BARE],
        "run": [sys.executable, "-m", "batchrun", *run],
        "help": [sys.executable, "-m", "batchrun", "--help"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess([], quiet=True) as emu:
        workdir = Path(tmp)
        (workdir / "job.toml").write_text(JOB)
        (workdir / "input.csv").write_text("id,text\nr1,great value\n")
        todo = commands(emu)
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in todo}
        for command in todo.values():  # one warm-up each: page cache, .pyc files
            measure(command, workdir)
        for _ in range(args.rounds):
            for name, command in todo.items():
                figures[name].append(measure(command, workdir))
    report(figures)


def report(figures: dict[str, list[dict[str, float]]]) -> None:
    med = {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        for name, rounds in figures.items()
    }
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':6} {'wall s':>8} {'CPU s':>8} {'RSS MB':>8}   (medians of {len(figures['run'])})")
    for name, m in med.items():
        print(f"{name:6} {m['wall_s']:8.3f} {m['cpu_s']:8.3f} {m['rss_mb']:8.1f}")
    ratio = med["run"]["cpu_s"] / med["bare"]["cpu_s"]
    print(f"run CPU / bare CPU: {ratio:.2f}x (target <= 1.35x)")
    print(f"run RSS: {med['run']['rss_mb']:.0f} MB (target <= 110 MB)")
    print(f"--help wall: {med['help']['wall_s']:.3f} s (target <= 0.15 s)")


if __name__ == "__main__":
    main()
