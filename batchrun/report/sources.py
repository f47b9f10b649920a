"""The files a report covers: paths, directories and globs expanded (local or on an object
store), each file's footer read once (where batchrun's columns are, its job, its partition
values), and the ``--by`` keys checked against them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun._errors import InputError
from batchrun._types import EXTRA_COLUMNS, RESULT_COLUMNS
from batchrun.io.files import Found, NotFound, describe, find, is_remote, partitions
from batchrun.report.selection import DAY, DayRange

PREFIX_METADATA_KEY = b"batchrun.prefix"
JOB_METADATA_KEY = b"batchrun.job"
# Grouping keys every output has without a column of that name: the job in its metadata,
# the file, the date (its date= partition, else the UTC day of completed_at) and the day.
JOB, FILE, DATE = "job", "file", "date"
PSEUDO_COLUMNS = (JOB, FILE, DATE, DAY)

# Metric columns every batchrun output has; a file lacking any of them is foreign.
TOKENS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")
METRICS = ("status", *TOKENS, "cost_usd", "latency_ms")
OWN_COLUMNS = frozenset((*RESULT_COLUMNS, *EXTRA_COLUMNS))
_PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


# ------------------------------------------------------------ finding files


def expand(paths: Sequence[str]) -> list[Found]:
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
class Source:
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
        physical = self.prefix + name if name in OWN_COLUMNS else name
        return physical if physical in names else None


def open_sources(files: Sequence[Found], days: DayRange) -> list[Source]:
    # Pruned on hive keys alone, before anything is opened.
    typed = partitions(files)
    kept = [(f, p) for f, p in zip(files, typed, strict=True) if days.admits_partitions(p)]
    sources = [_open(f) for f, _ in kept]
    for source, (_, parts) in zip(sources, kept, strict=True):
        source.partitions = parts
    return sources


def _open(found: Found) -> Source:
    # Only the footer is read here; files are opened again one at a time, so a
    # year of hourly outputs does not hold thousands of open handles.
    path = found.name
    try:
        schema = pq.read_schema(found.path, filesystem=found.fs)
    except (OSError, pa.ArrowException) as exc:  # the pyarrow boundary
        raise InputError(unreadable(path, exc, "cannot read {} as Parquet")) from exc
    prefix = _detect_prefix(schema)
    missing = tuple(c for c in METRICS if prefix + c not in set(schema.names))
    job = (schema.metadata or {}).get(JOB_METADATA_KEY)
    name = job.decode("utf-8", "replace") if job else None
    return Source(path, schema, prefix, missing, file=found, job=name)


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


def check_by(keys: Sequence[str], sources: Sequence[Source]) -> None:
    """A by column must exist in at least one file; in the others it is null."""
    for key in keys:
        if key not in PSEUDO_COLUMNS and not any(
            s.column(key) or key in s.partitions for s in sources
        ):
            raise InputError(
                f"--by column {key!r} not found; available: {', '.join(_available(sources))}"
            )


def _available(sources: Sequence[Source]) -> list[str]:
    names: dict[str, None] = {}
    for s in sources:
        for name in [*s.schema.names, *s.partitions]:
            result_name = name.removeprefix(s.prefix)
            names[result_name if result_name in OWN_COLUMNS else name] = None
    return list(names | dict.fromkeys(PSEUDO_COLUMNS))


def unreadable(path: str, exc: BaseException, what: str) -> str:
    """A store's failure (denied, no credentials) in ``describe``'s one line; a bad file
    as before, with pyarrow's reason."""
    if is_remote(path) and isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
        return describe(path, exc)
    return f"{what.format(path)}: {exc}"
