"""Benchmark `batchrun report` over a month of nightly outputs.

Writes 30 daily outputs of 100,000 rows each in a hive layout
(``date=2026-11-01/part.parquet``) with realistic columns: long input ``text``
and ``response`` strings that the report must not read. Then times
``report(..., by=["date", "model"])`` (median of 3) against a baseline that
does what a pandas user would: ``pd.read_parquet`` of everything, then groupby;
then the HTML page over the same report (charts, the 90-group table), and its size.

    python bench/bench_report.py [--days 30] [--rows 100000] [--dir /tmp/brbench]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batchrun.report.aggregate import render, report
from batchrun.report.page import render_html

MODELS = np.array(["gpt-5.5", "gpt-5.5-mini", "glm-5.2"])
STATUSES = np.array(["ok"] * 95 + ["error"] * 3 + ["invalid", "pending"])
ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ,.", dtype=np.uint8)


def text_column(rng: np.random.Generator, rows: int, mean_chars: int) -> pa.Array:
    """Random word-like strings, built as one buffer plus offsets (fast to generate)."""
    lengths = rng.integers(mean_chars // 2, mean_chars * 3 // 2, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = rng.choice(ALPHABET, int(offsets[-1]))
    array = pa.LargeStringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(data))
    return array.cast(pa.string())


def day_table(rng: np.random.Generator, rows: int, day: int) -> pa.Table:
    status = rng.choice(STATUSES, rows)
    ok = status == "ok"
    prompt = rng.integers(200, 2000, rows)
    completion = rng.integers(5, 400, rows)
    cached = rng.integers(0, 200, rows)

    def when_ok(values: np.ndarray, type_: pa.DataType) -> pa.Array:
        return pa.array(values, type_, mask=~ok)

    return pa.table(
        {
            "review_id": pa.array(np.char.add("r", np.arange(rows).astype(str))),
            "product_id": pa.array(rng.integers(0, 50_000, rows)),
            "text": text_column(rng, rows, 600),
            "response": pa.array(text_column(rng, rows, 800), mask=~ok),
            "reasoning_content": pa.nulls(rows, pa.string()),
            "tool_calls": pa.nulls(rows, pa.string()),
            "finish_reason": when_ok(np.full(rows, "stop"), pa.string()),
            "model": pa.array(rng.choice(MODELS, rows)),
            "response_id": when_ok(np.char.add("id-", np.arange(rows).astype(str)), pa.string()),
            "prompt_tokens": when_ok(prompt, pa.int64()),
            "completion_tokens": when_ok(completion, pa.int64()),
            "total_tokens": when_ok(prompt + completion, pa.int64()),
            "cached_tokens": when_ok(cached, pa.int64()),
            "reasoning_tokens": when_ok(completion // 3, pa.int64()),
            "cost_usd": when_ok(
                ((prompt - cached) * 1.25 + cached * 0.125 + completion * 10.0) / 1e6, pa.float64()
            ),
            "status": pa.array(status),
            "error_type": pa.array(np.full(rows, "server_error"), mask=status != "error"),
            "error_message": pa.array(np.full(rows, "HTTP 503"), mask=status != "error"),
            "attempts": pa.array(np.where(ok, 1, 0).astype(np.int32)),
            "latency_ms": when_ok(rng.gamma(2.0, 400.0, rows), pa.float64()),
            "completed_at": pa.array(
                [datetime(2026, 11, day, tzinfo=UTC)] * rows, pa.timestamp("us", tz="UTC")
            ),
        }
    )


def generate(root: Path, days: int, rows: int) -> list[Path]:
    paths = [root / f"date=2026-11-{day:02d}" / "part.parquet" for day in range(1, days + 1)]
    if all(p.exists() and pq.ParquetFile(p).metadata.num_rows == rows for p in paths):
        return paths  # reuse a previous run's files
    rng = np.random.default_rng(0)
    for day, path in enumerate(paths, start=1):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(day_table(rng, rows, day), path)
    return paths


def baseline(root: Path) -> pd.DataFrame:
    df = pd.read_parquet(root)
    ok = df[df["status"] == "ok"]
    sums = df.groupby(["date", "model"], observed=True)[
        ["prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "cost_usd"]
    ].sum()
    counts = df.groupby(["date", "model", "status"], observed=True).size().unstack(fill_value=0)
    latency = ok.groupby(["date", "model"], observed=True)["latency_ms"].quantile([0.5, 0.95])
    return sums.join(counts).join(latency.unstack())


def median_seconds(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/batchrun-bench-report"))
    args = parser.parse_args()

    start = time.perf_counter()
    paths = generate(args.dir, args.days, args.rows)
    total_rows = args.days * args.rows
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    ready = time.perf_counter() - start
    print(
        f"data: {len(paths)} files, {total_rows:,} rows, {size_mb:,.0f} MB (ready in {ready:.1f} s)"
    )

    result = report([str(args.dir)], by=["date", "model"])
    assert result.table["rows"].iloc[-1] == total_rows
    ours = median_seconds(lambda: report([str(args.dir)], by=["date", "model"]))
    base = median_seconds(lambda: baseline(args.dir))
    for name, secs in (("batchrun report", ours), ("pd.read_parquet + groupby", base)):
        print(f"{name:>26}: {secs:7.2f} s  {total_rows / secs:>12,.0f} rows/s")
    print(f"{'speed-up':>26}: {base / ours:7.1f}x")
    page = render_html(result)
    page_s = median_seconds(lambda: render_html(result))
    print(f"{'HTML page':>26}: {page_s:7.2f} s  {len(page.encode()) / 1000:>9,.0f} kB")
    print(render(result.table.tail(4), "table"))


if __name__ == "__main__":
    main()
