"""Resume at scale: what checkpointing costs a run, and what a resume costs before it sends.

    python bench/bench_resume.py                      # 1,000,000 rows; live run of 20,000
    python bench/bench_resume.py --rows 100000 --live-rows 5000

Figures (all on a generated Parquet input with short prompts):

- (a) checkpoint write cost per row, two ways:
  ``live``: a real run (``run_job_file`` in this process, so it can be timed from
  inside) of ``--live-rows`` rows against the emulator at zero latency; the
  writer's time in ``_to_row`` (event loop) and in ``_insert`` (its worker
  thread) per row, and their share of the run's wall time.
  ``prefill``: ``Checkpoint.write_results`` storing ``rows - 1000`` answers, keyed
  by the fingerprints ``RequestBuilder`` computes for those rows: the same write
  path at the full size, where the SQLite B-tree is largest.
- (b) a resume that finds ``rows - 1000`` of ``rows`` answered: ``batchrun run``
  as a subprocess, from its start until the emulator's ledger shows the first
  request, then to its exit (1,000 requests plus the whole output written).
- (c) peak RSS (``/usr/bin/time``) of a run that finds every row answered.

Baselines in the same run: reading the Parquet input with pyarrow, and importing
batchrun (interpreter start-up), each under ``/usr/bin/time`` too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq

from batchrun import _checkpoint
from batchrun._batchdone import request_key
from batchrun._checkpoint import Checkpoint
from batchrun._emulator import EmulatorProcess
from batchrun._engine import prepare
from batchrun._jobfile import load_job
from batchrun._local import _DoneBatches
from batchrun._output import write_output
from batchrun._runner import RunOptions, run_job_file
from batchrun._types import Charge, Request, Result

KEY = "sk-bench"
LEFT_TO_DO = 1000
JOB = """\
[job]
name = "bench-resume"
[input]
path = "{input}"
id_column = "id"
[request]
model = "gpt-5.5"
prompt = "Label this review: {{text}}"
max_completion_tokens = 16
[limits]
concurrency = 64
[output]
path = "{output}"
[pricing."gpt-5.5"]
input = 1.25
cached_input = 0.125
output = 10.0
"""
Figures = dict[str, float]


# --- inputs and jobs --------------------------------------------------------------------


def make_input(path: Path, rows: int) -> None:
    moods = ("great value", "arrived broken", "fine, nothing special", "slow delivery")
    chunk = 100_000
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("text", pa.string())])) as out:
        for start in range(0, rows, chunk):
            ids = range(start, min(start + chunk, rows))
            out.write_table(
                pa.table(
                    {
                        "id": [f"r{i:08d}" for i in ids],
                        "text": [f"Review {i}: {moods[i % 4]}." for i in ids],
                    }
                )
            )


def write_job(workdir: Path, name: str, source: Path) -> Path:
    job = workdir / f"{name}.toml"
    job.write_text(JOB.format(input=source, output=workdir / f"{name}.out.parquet"))
    return job


def run_command(job: Path, emu: EmulatorProcess) -> list[str]:
    base_url = f'api.base_url="{emu.base_url}"'
    return [sys.executable, "-m", "batchrun", "run", str(job), "--quiet", "--set", base_url]


def env() -> dict[str, str]:
    return {**os.environ, "MODELSTREAM_API_KEY": KEY}


# --- measuring ----------------------------------------------------------------------------


def timed_child(command: list[str], workdir: Path) -> Figures:
    """Wall time and peak RSS of ``command``, by ``/usr/bin/time``."""
    report = workdir / "time.txt"
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *command],
        env=env(),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited {done.returncode}: {done.stderr[-2000:]}")
    return {"wall_s": wall, "rss_mb": int(report.read_text().split()[-1]) / 1024}


def baseline_read(source: Path, workdir: Path) -> Figures:
    code = (
        "import sys, pyarrow.parquet as pq\n"
        "sum(b.num_rows for b in pq.ParquetFile(sys.argv[1]).iter_batches(batch_size=4096))"
    )
    return timed_child([sys.executable, "-c", code, str(source)], workdir)


def baseline_import(workdir: Path) -> Figures:
    code = "import batchrun.cli, batchrun._runner"
    return timed_child([sys.executable, "-c", code], workdir)


class _Stopwatch:
    """Accumulates the time spent in one function, wherever it is called from."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


def live_run(source: Path, workdir: Path, rows: int) -> Figures:
    """(a) A real run, with the checkpoint writer's two steps timed from inside."""
    job = write_job(workdir, "live", source)
    to_row, insert = _Stopwatch(), _Stopwatch()
    original_to_row, original_insert = _checkpoint._to_row, Checkpoint._insert
    _checkpoint._to_row = to_row.wrap(original_to_row)
    Checkpoint._insert = insert.wrap(original_insert)  # type: ignore[method-assign]
    try:
        with EmulatorProcess([], quiet=True) as emu:
            started = time.perf_counter()
            summary = run_job_file(
                job,
                sets=[f'api.base_url="{emu.base_url}"'],
                options=RunOptions(api_key=KEY),
            )
            wall = time.perf_counter() - started
    finally:
        _checkpoint._to_row, Checkpoint._insert = original_to_row, original_insert
    assert summary.by_status == {"ok": rows}, summary.by_status
    writer = to_row.seconds + insert.seconds
    return {
        "wall_s": wall,
        "rows_per_s": rows / wall,
        "to_row_us": to_row.seconds / rows * 1e6,
        "insert_us": insert.seconds / rows * 1e6,
        "writer_us": writer / rows * 1e6,
        "writer_share": writer / wall,
        "commits": insert.calls,
    }


def _answered(job_path: Path, rows: int) -> Iterator[tuple[Request, Result]]:
    """(request, result) for every row but the last ``LEFT_TO_DO``, as a run stores them."""
    job = load_job(job_path)
    table, builder = prepare(job)
    now = datetime.now(UTC)
    start = 0
    for batch in table.batches():
        for item in builder.build(batch, start):
            if isinstance(item, Request) and int(item.key[1:]) < rows - LEFT_TO_DO:
                yield item, _result(now)
        start += batch.num_rows


def _result(now: datetime) -> Result:
    return Result(
        status="ok",
        response="positive",
        finish_reason="stop",
        model="gpt-5.5",
        response_id="chatcmpl-bench",
        prompt_tokens=18,
        completion_tokens=4,
        total_tokens=22,
        cached_tokens=0,
        reasoning_tokens=0,
        attempts=1,
        latency_ms=120.0,
        completed_at=now,
        cost_usd=0.0001,
        charges=(Charge(0.0001, usage_known=True, at=now.timestamp()),),
    )


def prefill(job_path: Path, rows: int) -> Figures:
    """(a, at scale) Store ``rows - LEFT_TO_DO`` answers through ``write_results``."""
    job = load_job(job_path)
    items = list(_answered(job_path, rows))  # built first: only the writing is timed

    async def write() -> None:
        send, receive = anyio.create_memory_object_stream[tuple[Request, Result, float | None]](
            1024
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(ckpt.write_results, receive)
            async with send:
                for item in items:
                    await send.send(item)

    with Checkpoint.open(job.output.checkpoint_path, job_name=job.name, fresh=True) as ckpt:
        started = time.perf_counter()
        anyio.run(write)
        wall = time.perf_counter() - started
        # As a run stopped by a signal (or one that ends) does: the output pass records
        # the input batches whose every request is answered (_batchdone).
        done = _DoneBatches(request_key(job))
        table, builder = prepare(job)
        write_output(job, table, builder, ckpt.lookup, {"batchrun.job": job.name}, on_batch=done)
        ckpt.record_done_batches(done.found)
    return {"wall_s": wall, "write_us": wall / len(items) * 1e6, "answers": len(items)}


def resume(job: Path, emu: EmulatorProcess) -> Figures:
    """(b) From the start of ``batchrun run`` to the emulator's first request, and to exit."""
    started = time.perf_counter()
    run = subprocess.Popen(
        run_command(job, emu), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while emu.ledger()["requests_received"] == 0:
        if run.poll() is not None:
            raise RuntimeError(f"the resume exited {run.returncode} before sending")
        time.sleep(0.005)
    first = time.perf_counter() - started
    _, stderr = run.communicate()
    total = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"the resume exited {run.returncode}: {stderr.decode()[-2000:]}")
    sent = emu.ledger()["requests_received"]
    return {"first_request_s": first, "total_s": total, "sent": sent}


# --- the report --------------------------------------------------------------------------


def print_table(rows: int, live_rows: int, f: dict[str, Figures]) -> None:
    a, p, r, d = f["live"], f["prefill"], f["resume"], f["done"]
    read, imp = f["read"], f["import"]
    done = rows - LEFT_TO_DO
    lines = [
        ("baseline: read the input with pyarrow", f"{read['wall_s']:.2f} s", read["rss_mb"]),
        ("baseline: start python, import batchrun", f"{imp['wall_s']:.2f} s", imp["rss_mb"]),
        (f"(a) live run of {live_rows:,} rows, 0 ms", f"{a['wall_s']:.1f} s", None),
        ("    rows per second", f"{a['rows_per_s']:.0f}", None),
        ("    writer: _to_row per row (event loop)", f"{a['to_row_us']:.1f} us", None),
        ("    writer: _insert per row (thread)", f"{a['insert_us']:.1f} us", None),
        ("    writer total per row", f"{a['writer_us']:.1f} us", None),
        ("    writer share of the run's wall time", f"{a['writer_share']:.1%}", None),
        (f"(a) write_results of {p['answers']:,.0f} answers", f"{p['wall_s']:.1f} s", None),
        ("    per row", f"{p['write_us']:.1f} us", None),
        (
            f"(b) resume, {done:,} of {rows:,} done: 1st request",
            f"{r['first_request_s']:.2f} s",
            None,
        ),
        (f"    to exit ({r['sent']:.0f} sent, output written)", f"{r['total_s']:.2f} s", None),
        (f"(c) run with all {rows:,} done", f"{d['wall_s']:.2f} s", d["rss_mb"]),
    ]
    width = max(len(name) for name, _, _ in lines)
    print(f"\nbench_resume: {rows:,} rows, {os.cpu_count()} CPUs")
    print(f"  {'':<{width}}  {'figure':>10}  {'peak RSS':>9}")
    for name, value, rss in lines:
        peak = "" if rss is None else f"{rss:.0f} MB"
        print(f"  {name:<{width}}  {value:>10}  {peak:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--live-rows", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_resume_"))
    workdir.mkdir(parents=True, exist_ok=True)
    source, live_source = workdir / "input.parquet", workdir / "live.parquet"
    make_input(source, args.rows)
    make_input(live_source, args.live_rows)
    figures: dict[str, Figures] = {}
    figures["read"] = baseline_read(source, workdir)
    figures["import"] = baseline_import(workdir)
    print("live run ...", file=sys.stderr)
    figures["live"] = live_run(live_source, workdir, args.live_rows)
    job = write_job(workdir, "resume", source)
    print("prefilling the checkpoint ...", file=sys.stderr)
    figures["prefill"] = prefill(job, args.rows)
    with EmulatorProcess([], quiet=True) as emu:
        print("resuming ...", file=sys.stderr)
        figures["resume"] = resume(job, emu)
        print("running with everything done ...", file=sys.stderr)
        figures["done"] = timed_child(run_command(job, emu), workdir)
        assert emu.ledger()["requests_received"] == LEFT_TO_DO, "the all-done run sent requests"
    print_table(args.rows, args.live_rows, figures)


if __name__ == "__main__":
    main()
