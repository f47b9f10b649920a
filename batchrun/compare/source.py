"""The outputs ``compare`` reads: one job's, split into variants, rows aligned by position.

An output with a ``variant`` column holds every variant's rows; an output without one
is one variant, named after the OUTPUT argument (``out/glm.parquet`` -> ``glm``).
A variant's rows come in input order, so the n-th row of every variant is the same
input row. Files are read in batches of a few columns, every variant in step, so
memory stays flat however many rows there are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrun._errors import JobError
from batchrun._types import EXTRA_COLUMNS, RESULT_COLUMNS
from batchrun.io.files import Found, NotFound, describe, find

VARIANT = "variant"
CHUNK_ROWS = 65_536
_JOB_KEY = b"batchrun.job"
_PREFIX_KEY = b"batchrun.prefix"


@dataclass(frozen=True)
class Layout:
    """Where an output's columns are: input columns, parsed columns, batchrun's own."""

    schema: pa.Schema
    prefix: str
    inputs: tuple[str, ...]
    parsed: tuple[str, ...]
    variant: str | None  # the variant column's name, when there is one

    def own(self, name: str) -> str:
        return self.prefix + name


@dataclass(frozen=True)
class Output:
    """One OUTPUT argument: its files (shards or one file) and their layout."""

    spec: str
    files: tuple[Found, ...]
    job: str
    layout: Layout

    @property
    def name(self) -> str:
        """The variant an output without a ``variant`` column stands for."""
        return PurePosixPath(self.spec.rstrip("/")).stem or self.spec


def open_outputs(specs: Sequence[str]) -> list[Output]:
    """Each OUTPUT's files, checked: batchrun outputs of one job, with one layout."""
    outputs = [_output(spec) for spec in specs]
    jobs = {out.job for out in outputs}
    if len(jobs) > 1:
        named = ", ".join(f"{out.spec} is job {out.job!r}" for out in outputs)
        raise JobError(f"compare takes the outputs of one job: {named}")
    first = outputs[0].layout
    for out in outputs[1:]:
        if out.layout.parsed != first.parsed or out.layout.inputs != first.inputs:
            raise JobError(
                f"{out.spec}: its columns differ from {outputs[0].spec}'s; "
                "compare takes the outputs of one job"
            )
    return outputs


def _output(spec: str) -> Output:
    try:
        files = tuple(find(spec, (".parquet",)))
    except NotFound as exc:
        raise JobError(f"{exc.location}: {exc.cause}") from None
    except OSError as exc:
        raise JobError(describe(spec, exc)) from None
    if not files:
        raise JobError(f"{spec}: no .parquet files there")
    layouts = {_layout(found) for found in files}
    jobs = {_job_name(found) for found in files}
    if len(jobs) > 1 or len(layouts) > 1:
        raise JobError(f"{spec}: its files are outputs of different jobs ({', '.join(jobs)})")
    return Output(spec, files, jobs.pop(), layouts.pop())


def _metadata(found: Found) -> tuple[pa.Schema, dict[bytes, bytes]]:
    try:
        schema = pq.read_schema(found.path, filesystem=found.fs)
    except (OSError, pa.ArrowException) as exc:
        raise JobError(f"{found.name}: not a readable Parquet file ({exc})") from None
    return schema, dict(schema.metadata or {})


def _job_name(found: Found) -> str:
    _, metadata = _metadata(found)
    if _JOB_KEY not in metadata:
        raise JobError(f"{found.name}: not a batchrun output (no batchrun.job metadata)")
    return metadata[_JOB_KEY].decode("utf-8", "replace")


def _layout(found: Found) -> Layout:
    schema, metadata = _metadata(found)
    prefix = metadata.get(_PREFIX_KEY, b"").decode()
    names = schema.names
    first, shared = prefix + RESULT_COLUMNS[0], prefix + EXTRA_COLUMNS[0]
    if first not in names or shared not in names:
        raise JobError(f"{found.name}: not a batchrun output (no {first!r} column)")
    start, end = names.index(first), names.index(shared)
    inputs = tuple(names[:start])
    variant = prefix + VARIANT
    has_variant = bool(inputs) and inputs[-1] == variant
    # Parsed columns follow batchrun's own (an older output lacks the newer ones).
    own = {prefix + name for name in RESULT_COLUMNS}
    parsed = tuple(name for name in names[start:end] if name not in own)
    return Layout(
        schema.remove_metadata(),
        prefix,
        inputs[:-1] if has_variant else inputs,
        parsed,
        variant if has_variant else None,
    )


# --- reading every variant in step --------------------------------------------------------


def variant_names(outputs: Sequence[Output]) -> list[str]:
    """Every variant, in the order first seen; one pass over the variant columns only."""
    names: dict[Any, None] = {}
    for out in outputs:
        column = out.layout.variant
        if column is None:
            names[out.name] = None
            continue
        for batch in _batches(out, [column]):
            names.update(dict.fromkeys(pc.unique(batch.column(0)).to_pylist()))
    seen = [name for name in names if name is not None]
    duplicated = [out.name for out in outputs if out.layout.variant is None]
    if len(set(duplicated)) < len(duplicated):
        raise JobError(
            "two OUTPUT files stand for the same variant name; name the files apart "
            f"({', '.join(duplicated)})"
        )
    return seen


def aligned(
    outputs: Sequence[Output], columns: Sequence[str], variants: Sequence[str]
) -> Iterator[dict[str, pa.Table]]:
    """Chunks of rows, one table per variant, the n-th rows of each the same input row.

    Raises ``JobError`` when the variants do not have the same number of rows."""
    buffers: dict[str, list[pa.Table]] = {name: [] for name in variants}
    counts = dict.fromkeys(variants, 0)
    readers = [_split(out, columns) for out in outputs]
    while readers:
        for reader in list(readers):
            try:
                for name, table in next(reader):
                    buffers[name].append(table)
                    counts[name] += table.num_rows
            except StopIteration:
                readers.remove(reader)
        ready = min(counts.values())
        if ready:
            yield {name: _take(buffers[name], ready) for name in variants}
            counts = {name: count - ready for name, count in counts.items()}
    if any(counts.values()):
        shown = ", ".join(f"{name} {count} more" for name, count in counts.items() if count)
        raise JobError(f"the variants do not have the same rows: {shown}; compare needs them")


def _take(buffer: list[pa.Table], rows: int) -> pa.Table:
    whole = pa.concat_tables(buffer) if len(buffer) > 1 else buffer[0]
    buffer.clear()
    if whole.num_rows > rows:
        buffer.append(whole.slice(rows))
    return whole.slice(0, rows)


def _split(out: Output, columns: Sequence[str]) -> Iterator[list[tuple[str, pa.Table]]]:
    """Each batch of an output as (variant, rows) pieces."""
    variant = out.layout.variant
    wanted = list(dict.fromkeys([*columns, *([variant] if variant else [])]))
    for batch in _batches(out, wanted):
        table = pa.Table.from_batches([batch])
        if variant is None:
            yield [(out.name, table)]
            continue
        names = table.column(variant)
        yield [
            (name, table.filter(pc.equal(names, pa.scalar(name))))
            for name in pc.unique(names).to_pylist()
            if name is not None
        ]


def _batches(out: Output, columns: list[str]) -> Iterator[pa.RecordBatch]:
    for found in out.files:
        try:
            with found.fs.open_input_file(found.path) as source:
                yield from pq.ParquetFile(source).iter_batches(CHUNK_ROWS, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise JobError(f"{found.name}: cannot read it ({exc})") from None
