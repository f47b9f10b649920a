"""Aggregate batchrun output Parquet files into a usage and cost report.

    paths -> files (+ hive partition values) -> projected record batches
          -> per-batch group-by -> running per-group sums + ok latencies
          -> report table (one row per group, then TOTAL) -> render

Only the columns the report needs are read, batch by batch, so a month of
nightly outputs with long ``response`` and input text columns costs little more
than reading its few numeric columns. Latency percentiles are exact: the ok
rows' ``latency_ms`` values are kept per group (8 bytes a row).

Null handling: token sums treat null as 0 (pending and invalid rows have no
usage). Token sums are billed tokens: a row that reused another row's answer
(dedupe; ``shared`` true, or in outputs older than that column an ok row with
``attempts = 0``) is counted in the ``shared`` column, not in the token sums.
``cost_usd`` sums the priced rows; a group where no row has a price is ``NaN``
("n/a" when rendered) rather than a misleading 0, and ``unpriced`` counts ok
rows whose model had no price, so an incomplete total is visible.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batchrun._errors import InputError, JobError
from batchrun._types import EXTRA_COLUMNS, RESULT_COLUMNS
from batchrun.io.files import Found, NotFound, describe, find, is_remote, partitions
from batchrun.job.config import Price
from batchrun.report.selection import DAY, WILDCARD, DayRange, reprice, with_day
from batchrun.report.text import FORMATS, MISSING_LABELS, STATUSES, TOTAL_LABEL, render

__all__ = [
    "FORMATS", "PSEUDO_COLUMNS", "TOTAL_LABEL", "ReportResult", "SkippedFile", "render", "report",
]  # fmt: skip

PREFIX_METADATA_KEY = b"batchrun.prefix"
JOB_METADATA_KEY = b"batchrun.job"
PRICING_METADATA_KEY = b"batchrun.pricing"
# Grouping keys every output has without a column of that name: the job in its metadata,
# the file, the date (its date= partition, else the UTC day of completed_at) and the day.
JOB, FILE, DATE = "job", "file", "date"
PSEUDO_COLUMNS = (JOB, FILE, DATE, DAY)

# Metric columns every batchrun output has; a file lacking any of them is foreign.
_TOKENS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")
_METRICS = ("status", *_TOKENS, "cost_usd", "latency_ms")
_OPTIONAL = ("shared", "synthetic", "attempts", "completed_at")  # read when present
# Every report also groups by these inside, so the HTML charts are roll-ups of one pass.
_CHART_KEYS = ("status", "model", DAY, "error_type")
_OWN_COLUMNS = frozenset((*RESULT_COLUMNS, *EXTRA_COLUMNS))
# Keys that are null because the row has no answer: their null group is named for the status.
_ANSWER_KEYS = _OWN_COLUMNS | {DAY, DATE}
_MISSING_BY_STATUS = {"pending": "(unanswered)", "invalid": "(invalid)", "error": "(failed)"}
_BATCH_ROWS = 65_536
_MAX_WORKERS = 8
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """An input file that is not a batchrun output, and why."""

    path: str
    missing: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.path}: not a batchrun output (missing columns: {', '.join(self.missing)})"


@dataclass(frozen=True, slots=True)
class ReportResult:
    """The report table plus what was read and what was skipped.

    ``table`` has the ``by`` columns, then ``rows``, one count per status,
    token sums, ``cost_usd`` (and ``repriced_usd`` with a pricing), ``unpriced``,
    ``cost_per_1k_answered`` (and ``repriced_per_1k_answered``: per 1,000 priced ok rows),
    ``latency_p50_ms`` and ``latency_p95_ms``; its last row is the total. A null key
    reads ``(unanswered)``, ``(invalid)``, ``(failed)`` or ``(none)``. ``table_by(keys)``
    is the same table grouped by any of ``by``, ``status``, ``model``, ``day``,
    ``error_type``.
    """

    table: pd.DataFrame
    files: tuple[str, ...]
    skipped: tuple[SkippedFile, ...] = ()
    by: tuple[str, ...] = ()
    repriced: bool = False
    days: DayRange = field(default_factory=DayRange)
    accumulator: _Accumulator | None = field(default=None, repr=False, compare=False)
    paths: tuple[str, ...] = ()
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    pricing: Mapping[str, Price] | None = None
    job_pricing: Mapping[str, Mapping[str, Price]] = field(default_factory=dict)

    @property
    def synthetic_rows(self) -> int:
        """Rows of the report whose answer came from batchrun's emulator, not a real API
        (also the ``synthetic`` column, shown only when this is not 0)."""
        if "synthetic" not in self.table.columns:
            return 0
        return int(self.table["synthetic"].iloc[-1])

    def table_by(self, keys: Sequence[str]) -> pd.DataFrame:
        """The report grouped by ``keys`` (each one of the groups read), from the same pass."""
        if self.accumulator is None:
            raise JobError("this report holds no groups to regroup")
        return self.accumulator.table(list(dict.fromkeys(keys)))

    def models(self) -> set[str]:
        """The models that answered rows in this selection."""
        if self.accumulator is None:
            return set()
        at = self.accumulator.group_keys.index("model")
        return {key[at] for key in self.accumulator.groups if isinstance(key[at], str)}

    def unmatched_prices(self) -> list[str]:
        """``--pricing`` models that appear in no output (``"*"`` aside)."""
        seen = self.models()
        return [m for m in self.pricing or {} if m != WILDCARD and m not in seen]


# ---------------------------------------------------------------- public API


def report(
    paths: Sequence[str],
    *,
    by: Sequence[str] = ("model", "status"),
    days: DayRange | None = None,
    pricing: Mapping[str, Price] | None = None,
) -> ReportResult:
    """Aggregate batchrun output files by ``by`` columns, with a TOTAL row.

    ``paths`` are Parquet files, directories (searched recursively) or globs;
    ``key=value`` directories in a path (hive partitions such as
    ``date=2026-11-25/``) become columns that can be grouped on. ``by`` names
    batchrun's result columns without any ``output.prefix``, input columns or
    partition keys, or ``day`` (the ``date=`` partition, else the day of
    ``completed_at``). ``days`` keeps the rows of those days; files in a
    ``date=`` partition outside it are not opened. ``pricing`` re-prices every
    row from its token columns (``repriced_usd``). ``by`` may also name the
    pseudo-columns ``job`` (the job in each file's metadata), ``file`` and ``date``
    (the ``date=`` partition, else the day), where no column of that name exists.

        >>> result = report(["out/date=*/"], by=["date"])  # doctest: +SKIP
        >>> print(render(result.table, "table"))  # doctest: +SKIP

    Raises ``InputError`` when nothing matches, when no file is a batchrun
    output, when a ``by`` column exists in none of the files, or when the
    selection has no rows.
    """
    keys = list(dict.fromkeys(by))
    days = days or DayRange()
    sources = _open_sources(_expand(paths), days)
    outputs = [s for s in sources if not s.missing]
    skipped = tuple(SkippedFile(s.path, s.missing) for s in sources if s.missing)
    if not outputs:
        raise InputError(_no_outputs_message(skipped, days))
    _check_by(keys, outputs)
    acc = _aggregate(outputs, keys, days, pricing)
    table = acc.table(keys)
    if not table["rows"].iloc[-1]:
        raise InputError(f"no rows to report in {len(outputs)} file(s)" + _range_note(days))
    files = tuple(s.path for s in outputs)
    return ReportResult(
        table, files, skipped, tuple(keys), pricing is not None, days, acc,
        paths=tuple(paths), pricing=pricing, job_pricing=_job_pricing(outputs),
    )  # fmt: skip


def _job_pricing(sources: Sequence[_Source]) -> dict[str, dict[str, Price]]:
    """Each job's own prices, as its outputs' metadata recorded them (job -> model -> price)."""
    found: dict[str, dict[str, Price]] = {}
    for source in sources:
        metadata = source.schema.metadata or {}
        raw = metadata.get(PRICING_METADATA_KEY)
        if raw is None:
            continue
        try:
            prices = {m: Price(**p) for m, p in json.loads(raw).items()}
        except (ValueError, TypeError, AttributeError):
            continue  # not what batchrun writes: the page says the prices are not recorded
        found.setdefault(source.job or "(unnamed job)", {}).update(prices)
    return found


def _range_note(days: DayRange) -> str:
    return f" from {days.describe()}" if days.active else ""


# ------------------------------------------------------------ finding files


def _expand(paths: Sequence[str]) -> list[Found]:
    """Files named by paths, directories and globs (local or ``s3://``/``gs://``), in
    order, each once."""
    if not paths:
        raise InputError("report needs at least one path")
    found: dict[str, Found] = {}
    for arg in paths:
        try:
            files = find(arg, _PARQUET_SUFFIXES)
        except NotFound as exc:
            raise InputError(_not_found_message(arg, exc)) from None
        except OSError as exc:  # the store's boundary: no bucket, no access, no endpoint
            raise InputError(describe(arg, exc)) from None
        if not files:
            raise InputError(f"no Parquet files match {arg}")
        found.update((f.name, f) for f in files if f.name not in found)
    return list(found.values())


def _not_found_message(arg: str, exc: NotFound) -> str:
    return str(exc) if is_remote(arg) else f"no Parquet files match {arg}"


# ----------------------------------------------------------- opening files


@dataclass(slots=True)
class _Source:
    """One file: where batchrun's columns are, and its partition values."""

    path: str
    schema: pa.Schema
    prefix: str
    missing: tuple[str, ...]
    partitions: dict[str, Any] = field(default_factory=dict)
    file: Found | None = None
    job: str | None = None

    def constant(self, name: str) -> Any:
        """A partition value, else the pseudo-column ``job`` or ``file``; None otherwise."""
        if name in self.partitions:
            return self.partitions[name]
        return {JOB: self.job, FILE: self.path}.get(name)

    def column(self, name: str) -> str | None:
        """Physical column for a report name, or None when the file lacks it."""
        names = self.schema.names
        physical = self.prefix + name if name in _OWN_COLUMNS else name
        return physical if physical in names else None


def _open_sources(files: Sequence[Found], days: DayRange) -> list[_Source]:
    # Pruned on hive keys alone, before anything is opened.
    typed = partitions(files)
    kept = [(f, p) for f, p in zip(files, typed, strict=True) if days.admits_partitions(p)]
    sources = [_open(f) for f, _ in kept]
    for source, (_, parts) in zip(sources, kept, strict=True):
        source.partitions = parts
    return sources


def _open(found: Found) -> _Source:
    # Only the footer is read here; files are opened again one at a time, so a
    # year of hourly outputs does not hold thousands of open handles.
    path = found.name
    try:
        schema = pq.read_schema(found.path, filesystem=found.fs)
    except (OSError, pa.ArrowException) as exc:  # the pyarrow boundary
        raise InputError(_unreadable(path, exc, "cannot read {} as Parquet")) from exc
    prefix = _detect_prefix(schema)
    missing = tuple(c for c in _METRICS if prefix + c not in set(schema.names))
    job = (schema.metadata or {}).get(JOB_METADATA_KEY)
    name = job.decode("utf-8", "replace") if job else None
    return _Source(path, schema, prefix, missing, file=found, job=name)


def _detect_prefix(schema: pa.Schema) -> str:
    """The ``output.prefix`` of a file: from its metadata, else from its columns."""
    recorded = (schema.metadata or {}).get(PREFIX_METADATA_KEY)
    if recorded is not None:
        return recorded.decode()
    # batchrun writes cost_usd immediately before status; the last such pair is
    # batchrun's own even when an input column is also called "status".
    names = schema.names
    for left, right in reversed(list(pairwise(names))):
        if left.endswith("cost_usd") and right == left.removesuffix("cost_usd") + "status":
            return left.removesuffix("cost_usd")
    return ""


def _no_outputs_message(skipped: Sequence[SkippedFile], days: DayRange) -> str:
    if not skipped:
        return "no file to report on" + _range_note(days)
    if len(skipped) == 1:
        return str(skipped[0])
    return f"none of the {len(skipped)} files is a batchrun output; first: {skipped[0]}"


def _check_by(keys: Sequence[str], sources: Sequence[_Source]) -> None:
    """A by column must exist in at least one file; in the others it is null."""
    for key in keys:
        if key not in PSEUDO_COLUMNS and not any(
            s.column(key) or key in s.partitions for s in sources
        ):
            raise InputError(
                f"--by column {key!r} not found; available: {', '.join(_available(sources))}"
            )


def _available(sources: Sequence[_Source]) -> list[str]:
    names: dict[str, None] = {}
    for s in sources:
        for name in [*s.schema.names, *s.partitions]:
            result_name = name.removeprefix(s.prefix)
            names[result_name if result_name in _OWN_COLUMNS else name] = None
    return list(names | dict.fromkeys(PSEUDO_COLUMNS))


# ---------------------------------------------------------------- reading


def _aggregate(
    sources: Sequence[_Source],
    keys: Sequence[str],
    days: DayRange,
    pricing: Mapping[str, Price] | None,
) -> _Accumulator:
    # Parquet decoding and Arrow's group-by release the GIL, so each worker
    # folds whole files into its own accumulator; merging them is cheap.
    total = _Accumulator(keys, pricing)
    workers = max(1, min(os.cpu_count() or 1, len(sources), _MAX_WORKERS))
    with ThreadPoolExecutor(workers) as pool:
        for partial in pool.map(lambda s: _aggregate_file(s, total, days), sources):
            total.merge(partial)
    return total


def _aggregate_file(source: _Source, like: _Accumulator, days: DayRange) -> _Accumulator:
    acc = _Accumulator(like.keys, like.pricing)
    try:
        for batch in _read(source, acc.group_keys):
            acc.add(days.select(batch))
    except (OSError, pa.ArrowException) as exc:  # the pyarrow boundary
        raise InputError(_unreadable(source.path, exc, "cannot report on {}")) from exc
    return acc


def _unreadable(path: str, exc: BaseException, what: str) -> str:
    """A store's failure (denied, no credentials) in ``describe``'s one line; a bad file
    as before, with pyarrow's reason."""
    if is_remote(path) and isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
        return describe(path, exc)
    return f"{what.format(path)}: {exc}"


def _read(source: _Source, keys: Sequence[str]) -> Iterator[pa.Table]:
    """The file's batches as narrow tables: by columns, the metric columns, ``day``."""
    names = [k for k in dict.fromkeys([*keys, *_METRICS, *_OPTIONAL]) if k != DAY]
    wanted = {name: source.column(name) for name in names}
    physical = list(dict.fromkeys(c for c in wanted.values() if c is not None))
    found = source.file
    assert found is not None
    remote = is_remote(found.name)  # coalesced range reads pay off on a store only
    date_is_day = DATE in wanted and wanted[DATE] is None and DATE not in source.partitions
    with pq.ParquetFile(found.path, filesystem=found.fs, pre_buffer=remote) as file:
        for batch in file.iter_batches(batch_size=_BATCH_ROWS, columns=physical):
            table = with_day(_narrow(batch, wanted, source), source.partitions)
            if date_is_day:
                table = table.set_column(table.schema.get_field_index(DATE), DATE, table[DAY])
            yield table


def _narrow(batch: pa.RecordBatch, wanted: dict[str, str | None], source: _Source) -> pa.Table:
    columns: dict[str, pa.Array[Any]] = {}
    for name, physical in wanted.items():
        if physical is not None:
            columns[name] = batch.column(physical)
        else:
            columns[name] = pa.repeat(source.constant(name), batch.num_rows)
    return pa.table(columns)


# ------------------------------------------------------------ aggregating


@dataclass(slots=True)
class _Group:
    """Running totals for one group of the finest grouping (by values and chart keys)."""

    rows: int = 0
    shared: int = 0
    synthetic: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TOKENS, 0))
    cost: float = 0.0
    priced: int = 0
    repriced: float = 0.0
    repriced_rows: int = 0
    latencies: list[np.ndarray] = field(default_factory=list)

    def merge(self, other: _Group) -> None:
        self.rows += other.rows
        self.shared += other.shared
        self.synthetic += other.synthetic
        for name in _TOKENS:
            self.tokens[name] += other.tokens[name]
        self.cost += other.cost
        self.priced += other.priced
        self.repriced += other.repriced
        self.repriced_rows += other.repriced_rows
        self.latencies.extend(other.latencies)


class _Accumulator:
    """Per-batch group-by, folded into one ``_Group`` per (by values, chart keys)."""

    def __init__(self, keys: Sequence[str], pricing: Mapping[str, Price] | None) -> None:
        self.keys = list(keys)
        self.pricing = pricing
        # status is always a grouping key inside, so counts per status fall out; the
        # other chart keys let table() roll the same pass up any other way.
        self.group_keys = list(dict.fromkeys([*self.keys, *_CHART_KEYS]))
        self.groups: dict[tuple[Any, ...], _Group] = {}

    def add(self, table: pa.Table) -> None:
        table = table.set_column(
            table.schema.get_field_index("status"), "status", table["status"].cast(pa.string())
        )
        table = _billed_tokens(table)
        table = table.append_column("_synthetic", _synthetic(table))
        repriced: pa.Array[Any] = pa.nulls(table.num_rows, pa.float64())
        if self.pricing is not None:
            repriced = reprice(table, self.pricing)
        table = table.append_column("_repriced", repriced)
        aggs: list[Any] = [  # pyarrow-stubs type each function name as a Literal
            ([], "count_all"),
            ("_shared", "sum"),
            ("_synthetic", "sum"),
            *((name, "sum") for name in _TOKENS),
            ("cost_usd", "sum"),
            ("cost_usd", "count"),
            ("_repriced", "sum"),
            ("_repriced", "count"),
            ("latency_ms", "list"),
        ]
        grouped = table.group_by(self.group_keys, use_threads=False).aggregate(aggs)
        for key, group in _groups(grouped, self.group_keys):
            self.groups.setdefault(key, _Group()).merge(group)

    def merge(self, other: _Accumulator) -> None:
        for key, group in other.groups.items():
            self.groups.setdefault(key, _Group()).merge(group)

    def table(self, keys: Sequence[str]) -> pd.DataFrame:
        """Groups rolled up to ``keys`` (a subset of the group keys), then TOTAL."""
        at = [self.group_keys.index(k) for k in keys]
        status_at = self.group_keys.index("status")
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        total = _new_row()
        for key, group in self.groups.items():
            status = key[status_at]
            named = tuple(_named(keys[j], key[i], status) for j, i in enumerate(at))
            _fold(merged.setdefault(named, _new_row()), group, status)
            _fold(total, group, status)
        rows = [_finish(dict(zip(keys, k, strict=True)), v) for k, v in _sorted(merged)]
        label = dict.fromkeys(keys, None) | ({keys[0]: TOTAL_LABEL} if keys else {})
        rows.append(_finish(label, total))
        columns = [c for c in _OUTPUT_COLUMNS if self.pricing is not None or "repriced" not in c]
        if not total["synthetic"]:
            columns.remove("synthetic")  # shown only when some answer is synthetic
        return pd.DataFrame(rows, columns=[*keys, *columns])


def _named(key: str, value: Any, status: Any) -> Any:
    """A null group key named for what it is: a row without an answer, or no value."""
    if value is not None:
        return value
    return _MISSING_BY_STATUS.get(status, "(none)") if key in _ANSWER_KEYS else "(none)"


def _billed_tokens(table: pa.Table) -> pa.Table:
    """Token columns zeroed on shared rows (counted once, on the row that paid), plus
    ``_shared`` (1 for a shared row)."""
    shared = _shared_mask(table)
    for name in _TOKENS:
        column = table[name].cast(pa.int64())
        zeroed = pc.if_else(shared, pa.scalar(0, pa.int64()), column)
        table = table.set_column(table.schema.get_field_index(name), name, zeroed)
    return table.append_column("_shared", pc.cast(shared, pa.int64()))


def _shared_mask(table: pa.Table) -> pa.ChunkedArray[Any] | pa.Array[Any]:
    shared = table["shared"]
    if shared.type == pa.bool_():
        return shared.fill_null(pa.scalar(False))
    attempts, status = table["attempts"], table["status"]
    if attempts.type == pa.null():
        return pa.chunked_array([pa.repeat(False, table.num_rows)])
    # Outputs written before the column: an ok row that sent nothing reused an answer.
    ok, unsent = pc.equal(status, pa.scalar("ok")), pc.equal(attempts, pa.scalar(0))
    return pc.and_(ok, unsent).fill_null(False)


def _synthetic(table: pa.Table) -> pa.ChunkedArray[Any] | pa.Array[Any]:
    """1 for a row whose answer came from batchrun's emulator (0 in older outputs)."""
    column = table["synthetic"]
    if column.type != pa.bool_():
        return pa.chunked_array([pa.repeat(0, table.num_rows)], pa.int64())
    return pc.cast(column.fill_null(pa.scalar(False)), pa.int64())


def _groups(grouped: pa.Table, keys: Sequence[str]) -> Iterator[tuple[tuple[Any, ...], _Group]]:
    key_values = [grouped[k].to_pylist() for k in keys]
    sums = {name: grouped[f"{name}_sum"].to_pylist() for name in _TOKENS}
    cost, priced = grouped["cost_usd_sum"].to_pylist(), grouped["cost_usd_count"].to_pylist()
    counts = grouped["count_all"].to_pylist()
    shared = grouped["_shared_sum"].to_pylist()
    synthetic = grouped["_synthetic_sum"].to_pylist()
    repriced, repriced_rows = grouped["_repriced_sum"].to_pylist(), grouped["_repriced_count"]
    latencies = grouped["latency_ms_list"].combine_chunks()
    for i in range(grouped.num_rows):
        values = pc.drop_null(latencies[i].values).to_numpy(zero_copy_only=False)
        yield (
            tuple(col[i] for col in key_values),
            _Group(
                rows=int(counts[i] or 0),
                shared=int(shared[i] or 0),
                synthetic=int(synthetic[i] or 0),
                tokens={name: int(sums[name][i] or 0) for name in _TOKENS},
                cost=float(cost[i] or 0.0),
                priced=int(priced[i] or 0),
                repriced=float(repriced[i] or 0.0),
                repriced_rows=repriced_rows[i].as_py(),
                latencies=[values.astype(np.float64, copy=False)],
            ),
        )


_OUTPUT_COLUMNS = (
    "rows",
    *STATUSES,
    "shared",
    "synthetic",
    *_TOKENS,
    "cost_usd",
    "repriced_usd",
    "unpriced",
    "cost_per_1k_answered",
    "repriced_per_1k_answered",
    "latency_p50_ms",
    "latency_p95_ms",
)


def _new_row() -> dict[str, Any]:
    names = ("rows", *STATUSES, "shared", "synthetic", *_TOKENS, "priced", "unpriced")
    names = (*names, "repriced_rows")
    return {**dict.fromkeys(names, 0), "cost": 0.0, "repriced": 0.0, "ok_latencies": []}


def _fold(row: dict[str, Any], group: _Group, status: Any) -> None:
    row["rows"] += group.rows
    row["shared"] += group.shared
    row["synthetic"] += group.synthetic
    if status in STATUSES:
        row[status] += group.rows
    for name in _TOKENS:
        row[name] += group.tokens[name]
    row["cost"] += group.cost
    row["priced"] += group.priced
    row["repriced"] += group.repriced
    row["repriced_rows"] += group.repriced_rows
    if status == "ok":
        # Percentiles describe successful calls; an error's latency is a timeout or a retry.
        row["unpriced"] += group.rows - group.priced
        row["ok_latencies"].extend(group.latencies)


def _finish(label: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    cost = row["cost"] if row["priced"] else math.nan
    repriced = row["repriced"] if row["repriced_rows"] else math.nan
    latencies = np.concatenate(row["ok_latencies"]) if row["ok_latencies"] else np.empty(0)
    p50, p95 = np.percentile(latencies, [50, 95]) if latencies.size else (math.nan, math.nan)
    return {
        **label,
        **{name: row[name] for name in ("rows", *STATUSES, "shared", *_TOKENS, "unpriced")},
        "synthetic": row["synthetic"],
        "cost_usd": cost,
        "repriced_usd": repriced,
        # Per 1,000 answered rows that have a price: pending, invalid and failed rows
        # would only dilute it, and unpriced rows are not in the cost.
        "cost_per_1k_answered": _per_1k(cost, row["ok"] - row["unpriced"]),
        "repriced_per_1k_answered": _per_1k(repriced, row["repriced_rows"]),
        "latency_p50_ms": float(p50),
        "latency_p95_ms": float(p95),
    }


def _per_1k(cost: float, rows: int) -> float:
    return cost * 1000 / rows if rows else math.nan


def _sorted(merged: dict[tuple[Any, ...], Any]) -> list[tuple[tuple[Any, ...], Any]]:
    # Keys may mix types across files (an id that is int in one, str in another);
    # missing values last, then by type name, then by value.
    def sort_key(item: tuple[tuple[Any, ...], Any]) -> tuple[Any, ...]:
        return tuple((v in MISSING_LABELS, type(v).__name__, v) for v in item[0])

    return sorted(merged.items(), key=sort_key)
