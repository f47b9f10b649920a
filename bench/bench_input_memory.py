"""Input streaming keeps memory flat as rows grow; reading the whole table does not.

    python bench/bench_input_memory.py [--sizes 100000,1000000]

Writes Parquet inputs (id, ~120-character text, one image URL on every tenth row)
into a temp directory, then measures each case in a fresh subprocess so that
peak RSS (``ru_maxrss``) belongs to that case alone:

- ``stream+build``: ``open_input(job).batches()`` and ``RequestBuilder.build`` over
  every row (requests are dropped as they are made, as the pipeline does);
- ``pq.read_table``: the baseline, the whole file in memory at once;
- ``idle``: the interpreter with pyarrow and batchrun imported, for reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CHUNK_ROWS = 100_000
WORDS = ["great", "terrible", "fine", "okay", "broken", "lovely", "slow", "fast", "cheap", "pricey"]


def make_input(path: Path, rows: int) -> None:
    """Write ``rows`` rows in chunks, so making the file does not hold it whole."""
    schema = pa.schema(
        [("id", pa.string()), ("text", pa.string()), ("images", pa.list_(pa.string()))]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            ids = range(start, min(start + CHUNK_ROWS, rows))
            chunk = {
                "id": [f"r{i}" for i in ids],
                "text": [
                    f"Review {i}: " + " ".join(WORDS[(i + k) % 10] for k in range(18)) for i in ids
                ],
                "images": [
                    [f"https://img.example.com/{i}.png"] if i % 10 == 0 else None for i in ids
                ],
            }
            writer.write_table(pa.table(chunk, schema=schema))


def measure(mode: str, path: str) -> dict[str, float]:
    """Run one case in this (child) process and return its figures."""
    from batchrun._config import InputConfig, Job, OutputConfig, RequestConfig
    from batchrun._input import open_input
    from batchrun._requests import RequestBuilder

    started, rows = time.perf_counter(), 0
    if mode == "stream+build":
        job = Job(
            name="bench",
            input=InputConfig(path=path, id_column="id"),
            request=RequestConfig(
                model="gpt-5.5",
                system_prompt="You label product reviews.",
                prompt="Sentiment of this review (positive, negative, neutral):\n{text}",
                image_urls_column="images",
                image_detail="low",
                max_completion_tokens=64,
            ),
            output=OutputConfig(path="unused.parquet"),
        )
        table = open_input(job)
        builder = RequestBuilder(job, table.schema)
        for batch in table.batches():
            rows += len(builder.build(batch, rows))
    elif mode == "pq.read_table":
        rows = pq.read_table(path).num_rows
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
    }


def run_child(mode: str, path: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, str(path)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    print(
        f"{'rows':>10}  {'case':<14} {'peak RSS MB':>11} {'Arrow peak MB':>13} "
        f"{'seconds':>8} {'rows/s':>9} {'us/row':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"input_{size}.parquet"
            make_input(path, size)
            for mode in ("idle", "stream+build", "pq.read_table"):
                print_row(size, mode, run_child(mode, path))


def print_row(size: int, mode: str, figures: dict[str, float]) -> None:
    seconds, rows = figures["seconds"], figures["rows"]
    rate = f"{rows / seconds:>9,.0f}" if rows else f"{'-':>9}"
    per_row = f"{seconds / rows * 1e6:>7.1f}" if rows else f"{'-':>7}"
    print(
        f"{size:>10,}  {mode:<14} {figures['peak_rss_mb']:>11.0f} "
        f"{figures['arrow_peak_mb']:>13.0f} {seconds:>8.2f} {rate} {per_row}"
    )


if __name__ == "__main__":
    main()
