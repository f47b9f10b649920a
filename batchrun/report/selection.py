"""What a report selects and how it re-prices: ``--since``/``--until`` and ``--pricing``.

The day of a row is its file's hive ``date=`` partition when the file has one
(a nightly job's rows that finish after midnight stay in their night), else the
UTC day of ``completed_at``. Pruning works on a file's partition values alone,
before the file is opened, so whatever lists the files (a directory walk or a
``pyarrow.dataset`` discovery) calls ``DayRange.admits_partitions`` on each
file's hive keys and never opens those outside the range.

Re-pricing applies a ``[pricing."MODEL"]`` table (the job file's format; ``"*"``
prices every model not listed) to each row's billed token columns with the
The run's own cost formula; a row whose model has no price, or that has no usage, is null.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchrun._errors import JobError
from batchrun.job.config import Price

# The job file's own validation of [pricing."MODEL"] tables, so both read alike.
from batchrun.job.load import pricing_tables

__all__ = ["DAY", "WILDCARD", "DayRange", "load_pricing", "parse_day", "reprice", "with_day"]

DAY = "day"  # the virtual column: partition date, else the day of completed_at
WILDCARD = "*"
_PARTITION_KEY = "date"


def parse_day(text: str | None, flag: str) -> date | None:
    """An ISO date (``2026-11-25``) given to ``flag``; None when not given."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise JobError(f"{flag}: {text!r} is not an ISO date (YYYY-MM-DD)") from None


@dataclass(frozen=True, slots=True)
class DayRange:
    """Inclusive day bounds; either may be open."""

    since: date | None = None
    until: date | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since > self.until:
            raise JobError(f"--since {self.since} is after --until {self.until}")

    @property
    def active(self) -> bool:
        return self.since is not None or self.until is not None

    def admits(self, day: date) -> bool:
        return (self.since is None or day >= self.since) and (
            self.until is None or day <= self.until
        )

    def admits_partitions(self, partitions: Mapping[str, Any]) -> bool:
        """False only for a file whose ``date=`` partition lies outside the range."""
        day = partition_day(partitions)
        return day is None or self.admits(day)

    def select(self, table: pa.Table) -> pa.Table:
        """The rows whose ``day`` is in range (a row without a day never is)."""
        if not self.active:
            return table
        days = table[DAY].cast(pa.date32())
        keep: Any = pa.scalar(True)
        if self.since is not None:
            keep = pc.and_(keep, pc.greater_equal(days, pa.scalar(self.since, pa.date32())))
        if self.until is not None:
            keep = pc.and_(keep, pc.less_equal(days, pa.scalar(self.until, pa.date32())))
        return table.filter(pc.fill_null(keep, False))

    def describe(self) -> str:
        return f"{self.since or 'the start'} to {self.until or 'the end'}"


def partition_day(partitions: Mapping[str, Any]) -> date | None:
    """The file's ``date=`` partition as a date, or None (absent or not an ISO date)."""
    value = partitions.get(_PARTITION_KEY)
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def with_day(table: pa.Table, partitions: Mapping[str, Any]) -> pa.Table:
    """``table`` plus the ``day`` column (ISO date strings)."""
    day = partition_day(partitions)
    if day is not None:
        column: pa.Array[Any] | pa.ChunkedArray[Any] = pa.repeat(day.isoformat(), table.num_rows)
    else:
        stamps = table["completed_at"]
        if pa.types.is_timestamp(stamps.type):
            utc = stamps.cast(pa.timestamp("us", tz="UTC"))
            column = pc.cast(utc, pa.date32()).cast(pa.string())
        else:  # absent (all null) or not a timestamp: no day
            column = pa.nulls(table.num_rows, pa.string())
    return table.append_column(DAY, column)


def load_pricing(path: str) -> dict[str, Price]:
    """``[pricing."MODEL"]`` tables from a TOML file; one-line JobError when malformed."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise JobError(f"--pricing: cannot read {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JobError(f"--pricing {path}: not valid TOML: {exc}") from None
    tables = raw.get("pricing")
    if not isinstance(tables, dict) or not tables:
        raise JobError(f'--pricing {path}: needs [pricing."MODEL"] tables with input and output')
    try:
        return pricing_tables(tables)
    except JobError as exc:
        raise JobError(f"--pricing {path}: {exc}") from None


def reprice(table: pa.Table, pricing: Mapping[str, Price]) -> pa.Array[Any]:
    """Each row's cost at ``pricing`` from its (billed) token columns; null if unpriced."""
    models = [m for m in pricing if m != WILDCARD]
    prices = [pricing[m] for m in models]
    names = table["model"].cast(pa.string())
    index: Any = pc.index_in(names, value_set=pa.array(models, pa.string()))
    if WILDCARD in pricing:
        prices.append(pricing[WILDCARD])
        index = pc.fill_null(index, len(models))

    def rate(get: Any) -> pa.Array[Any]:
        return pc.take(pa.array([get(p) for p in prices], pa.float64()), index)

    cached_rate = rate(lambda p: p.input if p.cached_input is None else p.cached_input)
    # Typed Any: pyarrow's stubs do not follow fill_null's result through the arithmetic.
    prompt: Any = table["prompt_tokens"]
    zero = pa.scalar(0, pa.int64())
    cached: Any = pc.fill_null(table["cached_tokens"], zero)
    completion: Any = pc.fill_null(table["completion_tokens"], zero)
    uncached = pc.multiply(pc.subtract(prompt, cached), rate(lambda p: p.input))
    micro: Any = pc.add(
        pc.add(uncached, pc.multiply(cached, cached_rate)),
        pc.multiply(completion, rate(lambda p: p.output)),
    )
    repriced: pa.Array[Any] = pc.divide(micro, 1_000_000.0)
    return repriced
