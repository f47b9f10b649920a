"""CPU per request of a 3-variant `batchrun run` against a one-variant run of as many requests.

    python bench/bench_variants.py [--rows 6000] [--rounds 3]

The one-variant job sends ``--rows`` requests; the 3-variant job sends ``--rows / 3``
rows through three variants (three prompts), the same number of requests in all. The
emulator runs once in its own process (0 ms latency, no limits); CPU is user + system
time of the ``batchrun run`` child alone (``os.wait4``), start-up included, checkpoint
and output deleted before each round. Prints the medians per request and the ratio.
Target: the 3-variant run within 10% of the one-variant run.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from batchrun.emulator import EmulatorProcess

JOB = """\
[job]
name = "bench-variants"
[input]
path = "input.csv"
id_column = "id"
[request]
model = "gpt-5.5"
prompt = "Sentiment of this review: {text}"
max_completion_tokens = 32
response_format = "json_object"
[limits]
concurrency = 64
[output]
path = "out.parquet"
parse = "json"
columns = {label = {type = "string", enum = ["positive", "negative", "neutral"]}}
[pricing."gpt-5.5"]
input = 1.25
output = 10.0
"""
VARIANTS = "".join(
    f'\n[[variants]]\nname = "v{i}"\nrequest.prompt = "Prompt {i}: {{text}}"\n' for i in range(3)
)


def write(directory: Path, rows: int, variants: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "input.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([f"r{i}", f"Review {i}: it was fine, mostly."] for i in range(rows))
    (directory / "job.toml").write_text(JOB + (VARIANTS if variants else ""))
    return directory


def cpu(directory: Path, base_url: str) -> float:
    for path in directory.glob("out.parquet*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in directory.glob(".out*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    command = [sys.executable, "-m", "batchrun", "run", "job.toml", "--quiet"]
    command += ["--set", f'api.base_url="{base_url}"']
    env = {**os.environ, "MODELSTREAM_API_KEY": "sk-bench"}
    child = subprocess.Popen(command, cwd=directory, env=env, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"batchrun run failed in {directory}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess([], quiet=True) as emu:
        one = write(Path(tmp) / "one", args.rows, variants=False)
        three = write(Path(tmp) / "three", args.rows // 3, variants=True)
        times: dict[str, list[float]] = {"one": [], "three": []}
        for _ in range(args.rounds):
            times["one"].append(cpu(one, emu.base_url))
            times["three"].append(cpu(three, emu.base_url))
    requests = args.rows // 3 * 3
    per = {name: statistics.median(values) / requests * 1e6 for name, values in times.items()}
    print(
        f"{requests:,} requests: one variant {per['one']:.0f} µs/request,"
        f" three variants {per['three']:.0f} µs/request"
        f" ({per['three'] / per['one']:.2f}x; medians of {args.rounds} rounds, CPU with start-up)"
    )


if __name__ == "__main__":
    main()
