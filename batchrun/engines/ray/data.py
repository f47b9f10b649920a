"""The Ray engine's input as a Ray dataset, and the functions Ray Data's read tasks run.

Apart from ``batchrun.engines.ray.engine`` so that a read task's process imports only this (pyarrow
and ``batchrun.io.input``), not the dispatcher's HTTP stack: it is on the way to the
first batch of every run.

A small input (``SMALL_INPUT_BYTES``) is read by the driver instead, with the local
engine's reader, and handed to Ray as ready blocks of one batch each: no read task
then, and so no worker process to start for one before the first batch can go out.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from batchrun.io.input import InputTable, conform, row_keys
from batchrun.job.config import Job

SMALL_INPUT_BYTES = 16 << 20
"""Input files up to this size in all are read by the driver (``read_here``)."""


def is_small(table: InputTable) -> bool:
    sizes = [file.found.size for file in table.files]
    return None not in sizes and sum(size or 0 for size in sizes) <= SMALL_INPUT_BYTES


def read_here(
    ray: Any,
    table: InputTable,
    job: Job,
    shard: tuple[int, int] | None,
    limit: int | None,
    rows: int,
) -> Any:
    """The input, read here, as a Ray dataset of blocks of at most ``rows`` rows (one
    worker batch each: every worker gets some), in the local engine's order and types;
    only ``shard``'s rows if one is given, and the first ``limit``."""
    parts: list[pa.Table] = []
    left = math.inf if limit is None else limit
    for batch in table.batches(rows):
        part = pa.Table.from_batches([batch])
        part = part if shard is None else in_shard(part, job, shard)
        if left < part.num_rows:
            part = part.slice(0, int(left))
        left -= part.num_rows
        if part.num_rows:
            parts.append(part)
        if left <= 0:
            break
    if not parts:
        parts = [table.schema.empty_table()]
    # from_blocks describes the blocks here; from_arrow runs a remote task per block for
    # that and waits for it, i.e. for a worker process to start (seconds on a busy host).
    from_blocks = getattr(ray.data, "from_blocks", ray.data.from_arrow)
    return from_blocks(parts)


def read_input(ray: Any, table: InputTable) -> Any:
    """The input as a Ray dataset, file by file in the local engine's order and types
    (CSV columns as strings, empty fields null), conformed to the unified schema."""
    parts = []
    for file in table.files:
        # The file's own filesystem (local, S3, GCS): read tasks on any node open it with
        # their own credentials (a pickled pyarrow filesystem carries none it found itself).
        where = {"filesystem": file.found.fs, "partitioning": None}
        if file.is_csv:
            convert = pacsv.ConvertOptions(
                column_types={name: pa.string() for name in file.schema.names},
                strings_can_be_null=True,
                null_values=[""],
            )
            parts.append(ray.data.read_csv(file.found.path, convert_options=convert, **where))
        else:
            parts.append(ray.data.read_parquet(file.found.path, **where))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return ds.map_batches(
        _conformed, fn_kwargs={"schema": table.schema}, batch_format="pyarrow", batch_size=None
    )


def _conformed(part: pa.Table, schema: pa.Schema) -> pa.Table:
    batches = [conform(batch, schema) for batch in part.to_batches()]
    return pa.Table.from_batches(batches, schema=schema)


def in_shard(part: pa.Table, job: Job, shard: tuple[int, int]) -> pa.Table:
    # Only with --shard: engines.base imports the HTTP stack.
    from batchrun.engines.base import shard_of

    index, count = shard
    keys = [key for batch in part.to_batches() for key in row_keys(batch, job, 0)]
    return part.filter(pa.array([shard_of(key, count) == index for key in keys], pa.bool_()))


__all__ = ["in_shard", "is_small", "read_here", "read_input"]
