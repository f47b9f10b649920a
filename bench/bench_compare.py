"""Benchmark `batchrun compare` over 1,000,000 rows x 3 variants.

Writes one output per variant (or, with ``--variant-column``, one file holding every
variant, each input row's variants together) with the output's real columns: a long
input ``text`` and ``response`` that compare must not read, a gold column, a parsed
``label``, ``status`` and ``cost_usd``. Then times ``compare(..., gold="gold")`` in a fresh
child process and reports its wall time and peak RSS, at ``--rows`` and at a tenth of it:
flat memory means the two peaks are about the same.

    python bench/bench_compare.py [--rows 1000000] [--dir /tmp/brcompare] [--variant-column]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchrun._types import EXTRA_COLUMNS, RESULT_COLUMNS
from batchrun.output.table import RESULT_TYPES

LABELS = np.array(["positive", "negative", "neutral", "mixed"])
VARIANTS = {"gpt-5.5": 0.92, "glm-5.2": 0.9, "deepseek-v4.1": 0.8}
ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ,.", dtype=np.uint8)
METADATA = {b"batchrun.job": b"bench-compare", b"batchrun.prefix": b""}


def text_column(rng: np.random.Generator, rows: int, mean_chars: int) -> pa.Array:
    lengths = rng.integers(mean_chars // 2, mean_chars * 3 // 2, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = rng.choice(ALPHABET, int(offsets[-1]))
    array = pa.LargeStringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(data))
    return array.cast(pa.string())


def variant_table(rng: np.random.Generator, gold: np.ndarray, accuracy: float) -> pa.Table:
    rows = len(gold)
    right = rng.random(rows) < accuracy
    label = np.where(right, gold, rng.choice(LABELS, rows))
    status = np.where(rng.random(rows) < 0.02, "error", "ok")
    columns: dict[str, pa.Array] = {}
    for name in RESULT_COLUMNS:
        columns[name] = pa.nulls(rows, RESULT_TYPES[name])
    columns["response"] = text_column(rng, rows, 40)
    columns["status"] = pa.array(status)
    columns["cost_usd"] = pa.array(rng.random(rows) * 1e-4 * (1 + accuracy * 10))
    columns["label"] = pa.array(label, mask=status != "ok")
    columns["shared"] = pa.array(np.zeros(rows, bool))
    return pa.table(columns)


def write(directory: Path, rows: int, variant_column: bool) -> list[str]:
    rng = np.random.default_rng(7)
    directory.mkdir(parents=True, exist_ok=True)
    gold = rng.choice(LABELS, rows)
    inputs = pa.table(
        {
            "id": pa.array(np.arange(rows)),
            "text": text_column(rng, rows, 200),
            "gold": pa.array(gold),
        }
    )
    order = [*RESULT_COLUMNS, "label", *EXTRA_COLUMNS]
    parts = []
    for name, accuracy in VARIANTS.items():
        added = variant_table(rng, gold, accuracy).select(order)
        table = pa.Table.from_arrays(
            [*inputs.columns, *added.columns], names=[*inputs.column_names, *order]
        )
        if not variant_column:
            path = directory / f"{name}.parquet"
            pq.write_table(table.replace_schema_metadata(METADATA), path)
            parts.append(str(path))
            continue
        parts.append(table.add_column(3, "variant", pa.array([name] * rows)))
    if not variant_column:
        return parts
    combined = pa.concat_tables(parts)  # type: ignore[arg-type]
    order_rows = np.argsort(np.tile(np.arange(rows), len(VARIANTS)), kind="stable")
    path = directory / "all.parquet"
    pq.write_table(combined.take(pa.array(order_rows)).replace_schema_metadata(METADATA), path)
    return [str(path)]


def measure(paths: list[str]) -> dict[str, float]:
    """compare in a fresh process: wall seconds and peak RSS (MB)."""
    code = (
        "import json, sys, time\n"
        "from batchrun.compare.compute import compare\n"
        "t = time.perf_counter()\n"
        "c = compare(sys.argv[1:], gold='gold', columns=['label'])\n"
        "s = time.perf_counter() - t\n"
        # VmHWM, not ru_maxrss: that one keeps the forking parent's peak across exec.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "rss = int(hwm.split()[1]) / 1024\n"
        "print(json.dumps({'seconds': s, 'peak_rss_mb': rss, 'recommended': c.recommended}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *paths], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/brcompare")
    parser.add_argument("--variant-column", action="store_true")
    args = parser.parse_args()
    for rows in (args.rows // 10, args.rows):
        started = time.perf_counter()
        paths = write(Path(args.dir) / str(rows), rows, args.variant_column)
        written = time.perf_counter() - started
        result = measure(paths)
        print(
            f"{rows:>9,} rows x {len(VARIANTS)} variants: compare {result['seconds']:.2f} s,"
            f" peak RSS {result['peak_rss_mb']:.0f} MB"
            f" (recommended {result['recommended']}; data written in {written:.1f} s)"
        )


if __name__ == "__main__":
    main()
