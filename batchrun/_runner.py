"""``batchrun run``: load a job, apply ``--shard`` and ``--emulate``, pick the engine.

The engines (``engines.local.LocalRun``, ``engines.ray.engine.RayRun``) are peers on
``engines.base.Run``; both answer rows with ``engines.pipeline.Pipeline``. This module
decides only which one runs, on which job (a shard's own output, an emulated run's own
checkpoint) and against which API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from batchrun.engines.base import EMULATOR_KEY, Run, RunOptions, RunSummary, emulated_job, shard_of
from batchrun.engines.pipeline import Progress
from batchrun.job.config import Job
from batchrun.job.load import load_job

__all__ = [
    "Progress",
    "RunOptions",
    "RunSummary",
    "limit_output_path",
    "run_job",
    "run_job_file",
    "shard_of",
    "shard_output_path",
]

log = logging.getLogger("batchrun")


def run_job_file(
    path: str | Path,
    *,
    sets: Sequence[str] = (),
    variables: Sequence[str] = (),
    options: RunOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Load a job file and run it."""
    job = load_job(path, sets=sets, variables=variables)
    return run_job(job, options or RunOptions(), progress)


def run_job(
    job: Job, options: RunOptions, progress: Callable[[Progress], None] | None = None
) -> RunSummary:
    """Run ``job`` to the end (or to a stop) and write its output."""
    if options.shard is not None:
        output = replace(job.output, path=shard_output_path(job.output.path, options.shard))
        job = replace(job, output=output)
    if options.limit is not None:  # its own output; the job's checkpoint, so nothing is paid twice
        path = limit_output_path(job.output.path, options.limit)
        output = replace(job.output, path=path, checkpoint=str(job.output.checkpoint_path))
        job = replace(job, output=output)
    if not options.emulate:
        return _execute(job, options, progress)
    from batchrun.emulator import EmulatorProcess

    with EmulatorProcess() as emu:
        log.warning(
            "EMULATED RUN on %s: every answer is synthetic",
            emu.base_url,
            extra={"event": "emulated_run", "synthetic": True},
        )
        emulated = replace(options, base_url=emu.base_url, api_key=EMULATOR_KEY)
        return _execute(emulated_job(job), emulated, progress)


def _execute(
    job: Job, options: RunOptions, progress: Callable[[Progress], None] | None
) -> RunSummary:
    if job.variants or options.variant is not None:
        from batchrun.engines.variants import run_variants

        return run_variants(job, options, progress, _engine(options), options.variant)
    return _engine(options)(job, options, progress).execute()


def _engine(options: RunOptions) -> type[Run]:
    if options.engine == "ray":
        from batchrun.engines.ray.engine import (
            RayRun,  # Ray is an optional extra: imported only when asked
        )

        return RayRun
    from batchrun.engines.local import LocalRun

    return LocalRun


def limit_output_path(path: str, limit: int) -> str:
    """``out/x.parquet`` -> ``out/x.limit-10.parquet``: a trial never replaces the job's
    full output.

    >>> limit_output_path("s3://b/out/x.parquet", 10)
    's3://b/out/x.limit-10.parquet'
    """
    return _suffixed(path, f"limit-{limit}")


def shard_output_path(path: str, shard: tuple[int, int]) -> str:
    """``out/x.parquet`` -> ``out/x.shard-1-of-4.parquet``: each shard its own output.

    Shards of one job would otherwise replace each other's output file (and share
    one checkpoint lock); the checkpoint beside the output follows the new name.

    >>> shard_output_path("out/x.parquet", (1, 4))
    'out/x.shard-1-of-4.parquet'
    """
    return _suffixed(path, f"shard-{shard[0]}-of-{shard[1]}")


def _suffixed(path: str, tag: str) -> str:
    head, sep, name = path.rpartition("/")  # string parts: a URI is no local Path
    out = Path(name)
    return f"{head}{sep}{out.stem}.{tag}{out.suffix}"
