"""A job with ``[[variants]]``: every row through every variant, into one output.

Each variant runs as the job with its request (one after another, on the job's one
checkpoint), writing a part output of its own beside the checkpoint; the parts are then
woven into ``output.path``: the input columns, a ``variant`` column, batchrun's columns,
each input row once per variant, its variants together. One checkpoint means the budget
counts every variant's spend, a resume resumes every variant, identical requests are
sent once, and ``--retry-failed`` re-sends any variant's failed rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchrun._errors import JobError
from batchrun._types import RESULT_COLUMNS
from batchrun.engines.base import Run, RunOptions, RunSummary, run_exit_code
from batchrun.engines.pipeline import Progress
from batchrun.engines.reason import Outcome, exit_reason
from batchrun.job.config import Job, Variant
from batchrun.output.table import output_location, write_batches

log = logging.getLogger("batchrun")

VARIANT_COLUMN = "variant"
_CHUNK_ROWS = 4096
_SUMMARY_KEY = b"batchrun.summary"
_STATS_KEY = b"batchrun.output_stats"

Engine = Callable[[Job, RunOptions, Callable[[Progress], None] | None], Run]


def variant_job(job: Job, variant: Variant) -> Job:
    """The job as one variant runs it: its request, a part output, the job's checkpoint."""
    parts = job.output.checkpoint_path.parent / f".{job.output.checkpoint_path.stem}.variants"
    output = replace(
        job.output,
        path=str(parts / f"{variant.name}.parquet"),
        checkpoint=str(job.output.checkpoint_path),
    )
    return replace(job, request=variant.request, output=output, variants=())


def chosen(job: Job, name: str | None) -> list[Variant]:
    """Every variant, or the one ``--variant NAME`` names."""
    if name is None:
        return list(job.variants)
    found = [v for v in job.variants if v.name == name]
    if not found:
        names = ", ".join(v.name for v in job.variants) or "none: the job has no [[variants]]"
        raise JobError(f"--variant: no variant {name!r} (variants: {names})")
    return found


def run_variants(
    job: Job,
    options: RunOptions,
    progress: Callable[[Progress], None] | None,
    engine: Engine,
    only: str | None = None,
) -> RunSummary:
    """Run the variants in order, then weave their parts into the job's output.

    A stop (budget, signal, fatal answer) ends the sequence; the output is woven only
    when every variant's part exists, so it always holds each input row once per variant.
    """
    summaries: list[tuple[str, RunSummary]] = []
    for index, variant in enumerate(chosen(job, only)):
        log.info("variant %s (%d of %d)", variant.name, index + 1, len(job.variants))
        # --fresh starts the shared checkpoint over once, not once per variant.
        fresh = options.fresh and index == 0
        run = engine(variant_job(job, variant), replace(options, fresh=fresh), progress)
        summaries.append((variant.name, run.execute()))
        if summaries[-1][1].stopped is not None:
            break
    parts = [Path(variant_job(job, v).output.path) for v in job.variants]
    woven = all(part.is_file() for part in parts) and not summaries[-1][1].stopped
    if woven:
        weave(job, [(v.name, part) for v, part in zip(job.variants, parts, strict=True)])
    else:
        log.warning(
            "%s not written: not every variant has run to the end yet (run again)",
            job.output.path,
        )
    return _combined(job, summaries, woven)


def weave(job: Job, parts: Sequence[tuple[str, Path]]) -> None:
    """Write ``output.path`` from the variants' parts (same rows, same order)."""
    first = pq.read_schema(parts[0][1])
    metadata = dict(first.metadata or {})
    for key in (_SUMMARY_KEY, _STATS_KEY):
        metadata.pop(key, None)
    at = first.get_field_index(job.output.prefix + RESULT_COLUMNS[0])
    variant = pa.field(job.output.prefix + VARIANT_COLUMN, pa.string())
    schema = first.remove_metadata().insert(at, variant).with_metadata(metadata)
    batches = _woven(parts, schema, at)
    write_batches(output_location(job), schema, batches, dict)


def _woven(
    parts: Sequence[tuple[str, Path]], schema: pa.Schema, at: int
) -> Iterator[pa.RecordBatch]:
    readers = [pq.ParquetFile(path).iter_batches(_CHUNK_ROWS) for _, path in parts]
    while True:
        step = [next(reader, None) for reader in readers]
        batches = [batch for batch in step if batch is not None]
        if not batches:
            return
        rows = batches[0].num_rows
        if len(batches) < len(step) or any(batch.num_rows != rows for batch in batches):
            raise JobError("the variants' part outputs have different rows; run again")
        tables = [
            pa.Table.from_batches([batch]).add_column(
                at, schema.field(at), pa.array([name] * rows, pa.string())
            )
            for (name, _), batch in zip(parts, batches, strict=True)
        ]
        order = np.arange(rows * len(parts)).reshape(len(parts), rows).T.ravel()
        woven = pa.concat_tables(tables).take(order)
        yield from woven.cast(schema.remove_metadata()).to_batches()


def _combined(job: Job, summaries: Sequence[tuple[str, RunSummary]], woven: bool) -> RunSummary:
    """One summary over the variants' runs: counts summed, the first stop kept."""
    runs = [summary for _, summary in summaries]
    by_status: dict[str, int] = {}
    for run in runs:
        for status, count in run.by_status.items():
            by_status[status] = by_status.get(status, 0) + count
    by_error_type: dict[str, int] = {}
    for run in runs:
        for error_type, count in run.by_error_type.items():
            by_error_type[error_type] = by_error_type.get(error_type, 0) + count
    stopped = next((run.stopped for run in runs if run.stopped), None)
    failed = by_status.get("error", 0) + by_status.get("invalid", 0)
    exit_code = run_exit_code(stopped, failed, job.limits.max_failed_rows)
    costs = [run.cost_usd for run in runs if run.cost_usd is not None]
    spent = [run.run_cost_usd for run in runs if run.run_cost_usd is not None]
    return RunSummary(
        job=job.name,
        output_path=str(job.output.path) if woven else "(not written yet)",
        rows=sum(run.rows for run in runs),
        by_status=by_status,
        prompt_tokens=sum(run.prompt_tokens for run in runs),
        completion_tokens=sum(run.completion_tokens for run in runs),
        cached_tokens=sum(run.cached_tokens for run in runs),
        reasoning_tokens=sum(run.reasoning_tokens for run in runs),
        cost_usd=sum(costs) if costs else None,
        run_cost_usd=sum(spent) if spent else None,
        sent=sum(run.sent for run in runs),
        reused_from_checkpoint=sum(run.reused_from_checkpoint for run in runs),
        dedupe_saved_requests=sum(run.dedupe_saved_requests for run in runs),
        dedupe_saved_usd=sum(run.dedupe_saved_usd for run in runs),
        retries=sum(run.retries for run in runs),
        rate_limited=sum(run.rate_limited for run in runs),
        wall_s=round(sum(run.wall_s for run in runs), 3),
        stopped=stopped,
        exit_code=exit_code,
        synthetic=any(run.synthetic for run in runs),
        error=next((run.error for run in runs if run.error), None),
        empty_columns=[
            f"variant {name}: {line}" for name, run in summaries for line in run.empty_columns
        ],
        by_error_type=by_error_type,
        exit_reason=next(
            (run.exit_reason for run in runs if run.stopped),
            exit_reason(
                Outcome(
                    exit_code,
                    stopped,
                    sum(run.rows for run in runs),
                    by_status,
                    by_error_type,
                    job.limits.max_failed_rows,
                )
            ),
        ),
    )
