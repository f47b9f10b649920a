"""Input streaming keeps memory flat as rows grow; reading the whole table does not.

    python bench/bench_input_memory.py [--sizes 100000,1000000]

Writes Parquet inputs (id, ~130-character text, one image URL on every tenth row)
into a temp directory, then measures each case in a fresh subprocess so that the
peak memory belongs to that case alone:

- ``stream+build``: ``open_input(job).batches()`` and ``RequestBuilder.build`` over
  every row (requests are dropped as they are made, as the pipeline hands them on);
- ``write_output``: the output stage over the same rows, every row answered by a
  stand-in lookup that makes an ok answer per fingerprint on the fly;
- ``pq.read_table``: the baseline, the whole file in memory at once;
- ``idle``: the interpreter with pyarrow and batchrun imported, for reference.

``RSS@10%`` is the peak once a tenth of the rows is done; equal to the final peak
when memory does not grow with rows. Peak RSS is the child's ``VmHWM``
(``ru_maxrss`` would include the parent's memory at fork time). CPU per row is
process CPU time / rows. A calibration line (``sum(range(1000))``) is printed so
figures from a busy machine can be scaled.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun._types import Answer, Result
from batchrun.io.input import open_input
from batchrun.job.config import InputConfig, Job, OutputConfig, Price, RequestConfig
from batchrun.output.table import write_output
from batchrun.send.requests import RequestBuilder

CHUNK_ROWS = 50_000  # rows per Parquet row group, the unit pyarrow decodes
WORDS = ["great", "terrible", "fine", "okay", "broken", "lovely", "slow", "fast", "cheap", "pricey"]
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("images", pa.list_(pa.string()))])


def make_input(path: Path, rows: int) -> None:
    """Write ``rows`` rows in chunks, so making the file does not hold it whole."""
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            ids = range(start, min(start + CHUNK_ROWS, rows))
            chunk = {
                "id": [f"r{i}" for i in ids],
                "text": [
                    f"Review {i}: " + " ".join(WORDS[(i * k) % 10] for k in range(20)) for i in ids
                ],
                "images": [
                    [f"https://img.example.com/{i}.png"] if i % 10 == 0 else None for i in ids
                ],
            }
            writer.write_table(pa.table(chunk, schema=SCHEMA))


def bench_job(path: str) -> Job:
    return Job(
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
        output=OutputConfig(path=str(Path(path).with_suffix(".out.parquet"))),
        pricing={"gpt-5.5": Price(input=1.25, cached_input=0.125, output=10.0)},
    )


class Progress:
    """Peak RSS once a tenth of the rows is done: equal to the final peak when
    memory does not grow with the rows processed."""

    total = 0
    done = 0
    early_peak_mb: float | None = None

    @classmethod
    def advance(cls, rows: int) -> None:
        cls.done += rows
        if cls.early_peak_mb is None and cls.done * 10 >= cls.total:
            cls.early_peak_mb = peak_rss_mb()


def stream_and_build(path: str) -> int:
    job = bench_job(path)
    table = open_input(job)
    builder = RequestBuilder(job, table.schema)
    rows = 0
    for batch in table.batches():
        rows += len(builder.build(batch, rows))
        Progress.advance(batch.num_rows)
    return rows


def answer_everything(fingerprints: Sequence[str]) -> dict[str, Answer]:
    """Stands in for the checkpoint without holding a million answers in memory."""
    Progress.advance(len(fingerprints))
    done = datetime.now(UTC)
    usage = {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}
    return {
        fp: Answer(fp, Result("ok", "positive", attempts=1, completed_at=done, **usage))
        for fp in fingerprints
    }


def write_all(path: str) -> int:
    job = bench_job(path)
    table = open_input(job)
    builder = RequestBuilder(job, table.schema)
    return write_output(job, table, builder, answer_everything, {"batchrun.job": "bench"}).rows


CASES: dict[str, Callable[[str], int]] = {
    "idle": lambda path: 0,
    "stream+build": stream_and_build,
    "write_output": write_all,
    "pq.read_table": lambda path: pq.read_table(path).num_rows,
}


def measure(mode: str, path: str) -> dict[str, float]:
    """Run one case in this (child) process and return its figures."""
    Progress.total = pq.ParquetFile(path).metadata.num_rows
    started, cpu = time.perf_counter(), time.process_time()
    rows = CASES[mode](path)
    return {
        "rows": rows,
        "early_peak_mb": Progress.early_peak_mb or 0.0,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mb": peak_rss_mb(),
        "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
    }


def peak_rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(mode: str, path: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, str(path)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def print_row(size: int, mode: str, figures: dict[str, float]) -> None:
    seconds, rows = figures["seconds"], figures["rows"]
    rate = f"{rows / seconds:>9,.0f}" if rows else f"{'-':>9}"
    per_row = f"{figures['cpu_seconds'] / rows * 1e6:>10.1f}" if rows else f"{'-':>10}"
    early = f"{figures['early_peak_mb']:>11.0f}" if figures["early_peak_mb"] else f"{'-':>11}"
    print(
        f"{size:>10,}  {mode:<14} {early} {figures['peak_rss_mb']:>11.0f} "
        f"{figures['arrow_peak_mb']:>13.0f} {seconds:>8.2f} {rate} {per_row}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    calibration = timeit.timeit("sum(range(1000))", number=2000) / 2000 * 1e6
    print(f"calibration: sum(range(1000)) = {calibration:.1f} us (about 10 us on an idle core)")
    print(
        f"{'rows':>10}  {'case':<14} {'RSS@10% MB':>11} {'peak RSS MB':>11} {'Arrow peak MB':>13} "
        f"{'seconds':>8} {'rows/s':>9} {'CPU us/row':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"input_{size}.parquet"
            make_input(path, size)
            for mode in CASES:
                print_row(size, mode, run_child(mode, path))


if __name__ == "__main__":
    main()
