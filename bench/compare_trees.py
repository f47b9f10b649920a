"""A/B the whole pipeline's client CPU per request between checkouts of batchrun.

On a noisy 2-core VM one run of a change against the last one says little: the
bare aiohttp loop alone swings by ±30% between runs. This runs each checkout's
``bench_dispatch._pipeline_run`` in turn, round after round, each in a fresh
subprocess pinned to CPU 1 against one emulator pinned to CPU 0, with a bare
aiohttp loop in every round as the yardstick, and prints medians.

    git worktree add /tmp/before HEAD~1
    python bench/compare_trees.py /tmp/before . --rounds 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench_dispatch import _pin

from batchrun.emulator import EmulatorProcess

_CHILD = """
import json, sys
tree, url, n, case = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path[:0] = [tree, tree + "/bench"]
import bench_dispatch as b
b._pin(0, 1)
if case == "pipeline":
    print(json.dumps(b._pipeline_run(url, n)[0]))
else:
    print(json.dumps(b._cpu(lambda: b._bare_aiohttp(url, n))[0]))
"""


def _measure(tree: str, url: str, n: int, case: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, tree, url, str(n), case],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="checkouts of batchrun to compare")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    trees = [str(Path(tree).resolve()) for tree in args.trees]

    samples: dict[str, list[float]] = {"bare aiohttp loop": []}
    with EmulatorProcess([], quiet=True) as emu:
        _pin(emu.pid, 0)
        _measure(trees[0], emu.base_url, 300, "aiohttp")  # warm the emulator up
        for _ in range(args.rounds):
            emu.reset()
            samples["bare aiohttp loop"].append(
                _measure(trees[0], emu.base_url, args.requests, "aiohttp")
            )
            for tree in trees:
                emu.reset()
                micros = _measure(tree, emu.base_url, args.requests, "pipeline")
                samples.setdefault(tree, []).append(micros)

    base = statistics.median(samples["bare aiohttp loop"])
    print(f"{args.requests} requests, medians of {args.rounds} rounds (us/request)")
    for name, values in samples.items():
        median = statistics.median(values)
        runs = " ".join(f"{v:.0f}" for v in values)
        print(f"{name:<40} {median:6.0f}  {median / base:5.2f}x aiohttp   [{runs}]")


if __name__ == "__main__":
    main()
