"""The output Parquet: every input column, then batchrun's columns, written atomically.

``write_output`` streams the input again, keys each row again (``RequestBuilder.keyed``:
its key and the fingerprint the checkpoint keys answers by, no body), looks the answers up
batch by batch and writes through a temp file, which is swapped in only once complete. A
reader sees the old file or the new one, never half. Locally the temp file sits beside the
output (a dot-name that discovery skips) and ``os.replace`` swaps it in; temp files a
killed run left there are removed by the next successful write. On an object store it
sits in the local temp directory and is uploaded to the output's key in one call (the
object appears when the upload completes, whole): no other object is made, not even the
empty "directory" marker pyarrow leaves where it deletes one.

``check_replaceable`` refuses, before anything is sent, to replace a file that is not
an earlier output of the same job (``batchrun.job`` in its Parquet metadata).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchrun._errors import JobError, OutputError
from batchrun._types import EXTRA_COLUMNS, RESULT_COLUMNS, Answer, Keyed, Request, Result
from batchrun.io.files import describe, is_remote, resolve
from batchrun.io.input import InputTable
from batchrun.job.config import Job, Price
from batchrun.output.empty import count_nulls
from batchrun.output.owners import Owners
from batchrun.output.parse import ARROW_TYPES, parse_response
from batchrun.send.requests import RequestBuilder, Selector, keyed_batches

Lookup = Callable[[Sequence[str]], Mapping[str, Answer]]
Item = Keyed | Request | Result
"""A row as the output pass sees it: keyed (or built) if valid, its ``Result`` if not."""
BatchHook = Callable[[pa.RecordBatch, Sequence[Item], Mapping[str, Answer]], None]

RESULT_TYPES: Mapping[str, pa.DataType] = {
    **dict.fromkeys(
        ("response", "reasoning_content", "tool_calls", "finish_reason", "model", "response_id"),
        pa.string(),
    ),
    **dict.fromkeys(
        ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens"),
        pa.int64(),
    ),
    "cost_usd": pa.float64(),
    "status": pa.string(),
    "error_type": pa.string(),
    "error_message": pa.string(),
    "attempts": pa.int32(),
    "latency_ms": pa.float64(),
    "completed_at": pa.timestamp("us", tz="UTC"),
    "reasks": pa.int32(),
    "cut_off_retried": pa.bool_(),
    "shared": pa.bool_(),
    "synthetic": pa.bool_(),
}
"""The type of each column in ``RESULT_COLUMNS`` (and of ``EXTRA_COLUMNS``)."""

ROW_GROUP_ROWS = 65_536
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
STATS_METADATA_KEY = "batchrun.output_stats"
_TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)


@dataclass
class OutputStats:
    """What was written. Token and cost sums count rows that own their answer (what
    was paid for). ``shared_rows`` took the answer of another row with the identical
    request; ``shared_cost_usd`` is what sending them would have cost (0.0 unpriced)."""

    path: Path | str  # a local Path, or the object's URI
    rows: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    shared_rows: int = 0
    shared_cost_usd: float = 0.0
    synthetic_rows: int = 0  # rows whose answer came from batchrun's emulator
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    null_counts: Counter[str] = field(default_factory=Counter)  # parsed column -> null ok rows
    by_error_type: Counter[str] = field(default_factory=Counter)  # failed rows
    cut_off: int = 0  # failed rows whose answer stopped at the token limit

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"], data["by_status"] = str(self.path), dict(self.by_status)
        data["null_counts"] = dict(self.null_counts)
        data["by_error_type"] = dict(self.by_error_type)
        return data


# --- columns -------------------------------------------------------------------------


def added_fields(job: Job) -> list[pa.Field[Any]]:
    """The columns batchrun appends, prefixed, in order: result columns, parsed, extra."""
    prefix = job.output.prefix
    fields = [pa.field(prefix + name, RESULT_TYPES[name]) for name in RESULT_COLUMNS]
    for name, kind in _parsed_columns(job).items():
        fields.append(pa.field(prefix + name, ARROW_TYPES[kind]))
    fields.extend(pa.field(prefix + name, RESULT_TYPES[name]) for name in EXTRA_COLUMNS)
    return fields


def check_columns(job: Job, schema: pa.Schema) -> None:
    """Raise ``JobError`` when an added column's name is taken; call before sending."""
    own = (*RESULT_COLUMNS, *EXTRA_COLUMNS)
    clashing = [name for name in _parsed_columns(job) if name in own]
    if clashing:
        raise JobError(
            f"output.columns: {', '.join(clashing)} clash with batchrun's own columns; "
            "rename them in the prompt and in output.columns"
        )
    taken = [f.name for f in added_fields(job) if f.name in schema.names]
    if taken:
        raise JobError(
            f"output.prefix: output column(s) {', '.join(taken)} clash with input columns; "
            f'set output.prefix (e.g. "llm_") to rename batchrun\'s columns '
            f"(now {job.output.prefix!r})"
        )


def output_schema(job: Job, input_schema: pa.Schema) -> pa.Schema:
    """Input columns in input order (same types), then ``added_fields(job)``."""
    check_columns(job, input_schema)
    return pa.schema([*input_schema.remove_metadata(), *added_fields(job)])


def _parsed_columns(job: Job) -> Mapping[str, str]:
    return job.output.columns if job.output.parse == "json" else {}


# --- parsing one row ------------------------------------------------------------


def parse_status(job: Job, result: Result) -> Result:
    """``result``, or a copy with ``status="error", error_type="parse_error"`` when it is
    ok but its response does not parse into the job's declared columns
    (``invalid_answer`` when a value breaks its column's rule)."""
    return _parsed(job, result)[0]


def _parsed(job: Job, result: Result) -> tuple[Result, dict[str, Any] | None]:
    """The result (with ``parse_error`` when it does not parse) and its parsed values."""
    columns = _parsed_columns(job)
    if not columns or result.status != "ok":
        return result, None
    parsed = parse_response(result.response, columns, job.output.rules)
    if parsed.error is None:
        return result, parsed.values
    message = parsed.error or ""
    if result.finish_reason == "length":
        message += " (the answer was cut short: finish_reason=length; raise max_completion_tokens)"
    failed = dataclasses.replace(
        result, status="error", error_type=parsed.error_type, error_message=message
    )
    return failed, None


@dataclass(frozen=True, slots=True)
class _Row:
    """One output row's added values. A shared answer keeps its ``Result`` as is
    (not copied): ``attempts`` and ``cost`` are what differ for the reusing row."""

    result: Result
    cost: float | None
    parsed: dict[str, Any] | None
    shared: bool

    @property
    def attempts(self) -> int:
        return 0 if self.shared else self.result.attempts


def _rows(
    job: Job, items: Sequence[Item], answers: Mapping[str, Answer], owners: Owners | None
) -> list[_Row]:
    rows = []
    answered = [
        (item, answer)
        for item in items
        if not isinstance(item, Result) and (answer := answers.get(item.fingerprint))
    ]
    if owners is None:  # batches answered apart (Ray): keys are the id column's
        shares = iter([answer.owner_key != item.key for item, answer in answered])
    else:
        shares = iter(owners.shared([item.fingerprint for item, _ in answered]))
    for item in items:
        if isinstance(item, Result):  # invalid: never sent
            rows.append(_Row(item, None, None, False))
        elif (answer := answers.get(item.fingerprint)) is None:
            rows.append(_Row(Result(status="pending"), None, None, False))
        else:
            result, parsed = _parsed(job, answer.result)
            shared = next(shares)
            # The cost was priced once, when the answer arrived; a shared row paid nothing.
            cost = (0.0 if shared else result.cost_usd) if job.price is not None else None
            rows.append(_Row(result, cost, parsed, shared))
    return rows


def _cost(price: Price | None, result: Result) -> float | None:
    """What sending a shared row's request would have cost (dedupe's saving)."""
    if price is None or result.prompt_tokens is None:
        return None
    cached, completion = result.cached_tokens or 0, result.completion_tokens or 0
    return price.cost(result.prompt_tokens, cached, completion)


# --- batches ---------------------------------------------------------------------


def _output_batch(
    job: Job, batch: pa.RecordBatch, rows: Sequence[_Row], schema: pa.Schema
) -> pa.RecordBatch:
    results = [row.result for row in rows]
    arrays: list[pa.Array[Any]] = list(batch.columns)
    for name in RESULT_COLUMNS:
        if name == "cost_usd":
            values: list[Any] = [row.cost for row in rows]
        elif name == "attempts":
            values = [row.attempts for row in rows]
        elif name == "reasks":  # a shared row asked nothing, as it sent nothing
            values = [0 if row.shared else row.result.reasks for row in rows]
        elif name == "cut_off_retried":
            values = [not row.shared and bool(row.result.cut_off_retried) for row in rows]
        elif name == "completed_at":
            values = [_micros(result.completed_at) for result in results]
        else:
            values = list(map(attrgetter(name), results))
        arrays.append(pa.array(values, type=RESULT_TYPES[name]))
    for name, kind in _parsed_columns(job).items():
        values = [None if row.parsed is None else row.parsed[name] for row in rows]
        arrays.append(pa.array(values, type=ARROW_TYPES[kind]))
    arrays.append(pa.array([row.shared for row in rows], type=pa.bool_()))
    arrays.append(pa.array([result.synthetic for result in results], type=pa.bool_()))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _micros(moment: datetime | None) -> int | None:
    """Microseconds since the epoch; pyarrow converts aware datetimes ~20x slower."""
    if moment is None:
        return None
    if moment.tzinfo is None:  # naive times are taken as UTC, as pyarrow would
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def _count(stats: OutputStats, rows: Sequence[_Row], price: Price | None) -> None:
    billed: list[Result] = []  # token counts are summed per batch: fewer attribute writes
    for row in rows:
        result = row.result
        stats.by_status[result.status] += 1
        if row.parsed is not None:  # an ok row's parsed values
            count_nulls(stats.null_counts, row.parsed, row.parsed)
        if result.error_type is not None and result.status in ("error", "invalid"):
            stats.by_error_type[result.error_type] += 1
            stats.cut_off += result.finish_reason == "length"
        stats.synthetic_rows += result.synthetic
        if row.shared:
            stats.shared_rows += 1
            stats.shared_cost_usd += _cost(price, result) or 0.0
            continue
        billed.append(result)
        if row.cost is not None:
            stats.cost_usd = (stats.cost_usd or 0.0) + row.cost
    stats.rows += len(rows)
    for name in _TOKEN_FIELDS:
        tokens = sum(getattr(result, name) or 0 for result in billed)
        setattr(stats, name, getattr(stats, name) + tokens)


# --- writing ---------------------------------------------------------------------


def write_output(
    job: Job,
    table: InputTable,
    builder: RequestBuilder,
    lookup: Lookup,
    metadata: Mapping[str, str],
    *,
    select: Selector | None = None,
    batch_size: int = 4096,
    on_batch: BatchHook | None = None,
    footer: Callable[[], Mapping[str, str]] | None = None,
    overwrite: bool = False,
) -> OutputStats:
    """Write ``job.output.path`` from the input and the answers ``lookup`` finds.

    ``lookup(fingerprints)`` returns the answers it has, keyed by fingerprint;
    rows without one are written as ``pending``. ``select(keys)``, when given, is
    called once per input batch, in order, with every row key of the batch and
    returns which rows to write (``--limit``, ``--shard``); the others are left out.
    ``on_batch(batch, items, answers)``, when given, sees each batch as it is written.
    ``metadata`` becomes the file's key-value metadata; the counts written are
    added under ``batchrun.output_stats``, and ``footer()`` (called once every batch
    is written) adds what is known only then. ``overwrite``: see ``write_batches``.
    """
    schema = output_schema(job, table.schema).with_metadata(dict(metadata))
    path = output_location(job)
    stats = OutputStats(path=path, cost_usd=None if job.price is None else 0.0)
    batches = _output_batches(
        job, table, builder, lookup, schema, stats, select, batch_size, on_batch
    )

    def written() -> dict[str, str]:
        return stats_metadata(stats) | (dict(footer()) if footer is not None else {})

    write_batches(path, schema, batches, written, overwrite=overwrite)
    return stats


def output_location(job: Job) -> Path | str:
    """Where the output goes: a local ``Path``, or the object's URI (no ``Path``: it
    would fold ``s3://`` into ``s3:/``)."""
    return job.output.path if is_remote(job.output.path) else Path(job.output.path)


def output_batch(
    job: Job,
    batch: pa.RecordBatch,
    items: Sequence[Item],
    answers: Mapping[str, Answer],
    schema: pa.Schema,
    stats: OutputStats,
    owners: Owners | None = None,
) -> pa.RecordBatch:
    """One input batch's output rows (``items`` from ``RequestBuilder.keyed``), counted
    into ``stats``: the per-batch step of ``write_output``, for engines that answer
    batches elsewhere (Ray) and stream them to ``write_batches``. ``owners``, given
    for every batch of an output in order, decides which row owns an answer; without
    it the row whose key is the answer's ``owner_key`` does."""
    rows = _rows(job, items, answers, owners)
    _count(stats, rows, job.price)
    return _output_batch(job, batch, rows, schema)


def write_batches(
    path: Path | str,
    schema: pa.Schema,
    batches: Iterable[pa.RecordBatch],
    footer: Callable[[], Mapping[str, str]],
    *,
    overwrite: bool = False,
) -> None:
    """Write ``batches`` (in order) to ``path`` atomically, in row groups of
    ``ROW_GROUP_ROWS``; ``footer()``, called once ``batches`` is exhausted, adds
    key-value metadata known only then (the counts written, a run summary).

    Just before the swap, what stands at ``path`` must still be absent or an output of
    the job named in ``schema``'s ``batchrun.job`` metadata (unless ``overwrite``):
    a file written there during the run is left alone, the new output is kept beside
    it and ``OutputError`` names both."""
    job = (schema.metadata or {}).get(b"batchrun.job", b"").decode() or None
    with _atomic_writer(path, schema, None if overwrite else job) as writer:
        pending: list[pa.RecordBatch] = []
        for batch in batches:
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= ROW_GROUP_ROWS:
                writer.write_table(pa.Table.from_batches(pending, schema=schema))
                pending = []
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema=schema))
        writer.add_key_value_metadata(dict(footer()))


def stats_metadata(stats: OutputStats) -> dict[str, str]:
    """``stats`` as the file's ``batchrun.output_stats`` metadata."""
    return {STATS_METADATA_KEY: json.dumps(stats.to_dict())}


def _output_batches(
    job: Job,
    table: InputTable,
    builder: RequestBuilder,
    lookup: Lookup,
    schema: pa.Schema,
    stats: OutputStats,
    select: Selector | None,
    batch_size: int,
    on_batch: BatchHook | None = None,
) -> Iterator[pa.RecordBatch]:
    owners = Owners(job.request.dedupe)
    for batch, items in keyed_batches(table, builder, select=select, batch_size=batch_size):
        answers = lookup([item.fingerprint for item in items if not isinstance(item, Result)])
        if on_batch is not None:
            on_batch(batch, items, answers)
        yield output_batch(job, batch, items, answers, schema, stats, owners)


@contextmanager
def _atomic_writer(
    location: Path | str, schema: pa.Schema, job: str | None = None
) -> Iterator[pq.ParquetWriter]:
    """A writer on a temp file, swapped in for ``location`` (a path or a URI) only on
    success (and, given ``job``, only over nothing or that job's output: else kept
    beside it); stale temp files of killed runs are removed after a successful swap."""
    location = str(location)
    if is_remote(location):
        with _uploading_writer(location, schema, job) as writer:
            yield writer
        return
    path = os.path.abspath(location)
    directory, _, name = path.rpartition("/")
    # A dot-name, so globs and discovery never pick up a half-written file.
    temp = f"{directory}/.{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    fs = pafs.LocalFileSystem()
    try:
        fs.create_dir(directory, recursive=True)
        with fs.open_output_stream(temp) as sink, pq.ParquetWriter(sink, schema) as writer:
            yield writer
        if job is not None:
            _still_replaceable(location, job, lambda kept: os.replace(temp, kept))
        os.replace(temp, path)
        _remove_stale_temps(fs, directory, name)
    finally:
        _delete_quietly(fs, temp)


@contextmanager
def _uploading_writer(
    location: str, schema: pa.Schema, job: str | None
) -> Iterator[pq.ParquetWriter]:
    """A writer on a local temp file, uploaded to ``location``'s key once complete: one
    call, so a signal cannot cut it short (a killed upload leaves the old object)."""
    fs, path = resolve(location)
    with tempfile.TemporaryDirectory(prefix="batchrun-output-") as staging:
        local = os.path.join(staging, "output.parquet")
        with pq.ParquetWriter(local, schema) as writer:
            yield writer
        with _translating(location):

            def upload(to: str) -> None:
                pafs.copy_files(
                    local, to, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
                )

            if job is not None:
                _still_replaceable(location, job, lambda kept: upload(resolve(kept)[1]))
            upload(path)
            # Temp objects an earlier batchrun left beside the output (it wrote through one).
            _remove_stale_temps(fs, path.rpartition("/")[0], path.rpartition("/")[2])


def _still_replaceable(location: str, job: str, keep: Callable[[str], None]) -> None:
    """At the swap: refuse to replace a file that appeared at ``location`` during the
    run and is not ``job``'s output; ``keep`` puts this run's output beside it."""
    owner = _owner(location)
    if owner is None or owner == job:
        return
    directory, _, base = location.rpartition("/")
    stem, dot, suffix = base.rpartition(".")
    tag = uuid.uuid4().hex[:8]
    kept = (f"{directory}/" if directory else "") + (
        f"{stem}.{tag}.{suffix}" if dot else f"{base}.{tag}"
    )
    keep(kept)
    whose = "not a batchrun output" if owner == "" else f"the output of job {owner!r}"
    raise OutputError(
        f"output.path: {location} was written during the run and is {whose}; left alone,"
        f" this run's output is kept at {kept} (rerun with --overwrite to replace that file)"
    )


def _remove_stale_temps(fs: pafs.FileSystem, directory: str, name: str) -> None:
    """Temp files of runs killed while writing this output (any pid): not ours to keep."""
    stale = re.compile(rf"\.{re.escape(name)}\.[0-9]+(-[0-9a-f]+)?\.tmp")
    selector = pafs.FileSelector(directory, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if stale.fullmatch(info.base_name):
            _delete_quietly(fs, info.path)


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    with suppress(OSError):  # already gone (swapped in or never made)
        fs.delete_file(path)


@contextmanager
def _translating(location: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if not is_remote(location):
            raise
        raise OutputError(f"output.path: {describe(location, exc)}") from None


# --- keep an output nothing changed ---------------------------------------------------


def kept_output(job: Job, key: str, value: str) -> OutputStats | None:
    """The counts stored in the file at ``job.output.path`` when it is ``job``'s output
    and its metadata holds ``key: value`` (what it was written from); else None. Reads
    only the Parquet footer, never the rows."""
    location = output_location(job)
    fs, path = resolve(str(location))
    try:
        with _translating(str(location)):
            found = pq.read_metadata(path, filesystem=fs).metadata or {}
    except (OSError, OutputError, pa.ArrowException):
        return None  # missing or unreadable: written afresh
    if found.get(b"batchrun.job") != job.name.encode() or found.get(key.encode()) != value.encode():
        return None
    try:
        stored = json.loads(found[STATS_METADATA_KEY.encode()])
        by_status = Counter(stored.pop("by_status"))
        stored["null_counts"] = Counter(stored.get("null_counts", {}))
        by_error_type = Counter(stored.pop("by_error_type", {}))
        del stored["path"]
        return OutputStats(
            path=location, by_status=by_status, by_error_type=by_error_type, **stored
        )
    except (KeyError, TypeError, ValueError):
        return None


# --- never replace someone else's file ------------------------------------------------


def check_replaceable(job: Job, *, overwrite: bool = False) -> bool:
    """Raise ``OutputError`` (exit 2) when ``job.output.path`` holds a file that is not
    an output of ``job.name``: a typo must not destroy someone's data. ``overwrite``
    (``--overwrite``) allows it. Returns whether the job's own output is there."""
    location = job.output.path
    owner = _owner(location)
    if overwrite or owner is None or owner == job.name:
        return owner == job.name
    whose = "not a batchrun output" if owner == "" else f"the output of job {owner!r}"
    raise OutputError(
        f"output.path: {location} exists and is {whose}; refusing to replace it"
        " (pass --overwrite to replace it, or choose another output.path)"
    )


def _owner(location: str) -> str | None:
    """None when nothing is at ``location``; else the ``batchrun.job`` in its Parquet
    metadata, or "" when it has none (or is no Parquet file)."""
    fs, path = resolve(location)
    with _translating(location):
        info = fs.get_file_info(path if is_remote(location) else os.path.abspath(path))
        if info.type == pafs.FileType.NotFound:
            return None
        if info.type != pafs.FileType.File:
            return ""
    try:
        metadata = pq.read_schema(info.path, filesystem=fs).metadata or {}
    except (OSError, pa.ArrowException):
        return ""
    return metadata.get(b"batchrun.job", b"").decode("utf-8", "replace")
