"""How an answer is stored: a ``Result`` as one row of the ``answers`` table, field by
field in its own field order, and read back (by key, in chunks) as an ``Answer``."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from functools import cache
from operator import attrgetter
from typing import Any

from batchrun._types import Answer, RequestResult, Result
from batchrun.store.answers import (
    chunks,
    insert_new,
    key_params,
    key_prefix,
    replace,
    split_replaced,
    where_keys,
)
from batchrun.store.charges import own_charge
from batchrun.store.fpkey import fp_key

__all__ = [
    "RESULT_FIELDS",
    "ROW_COLUMNS",
    "Row",
    "insert_rows",
    "select_answered",
    "select_answers",
    "to_answer",
    "to_row",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Row = tuple[Any, ...]

# ---------------------------------------------------------------- rows

# A Result is stored field by field, in its own field order, so reading one back
# is a single positional constructor call (lookup cost matters at 1M rows). Its last
# field, ``charges``, goes to ``paid_usd`` (known charges) and the charges table (others).
RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Result) if f.name != "charges")
_TS = RESULT_FIELDS.index("completed_at")
_SYNTHETIC = RESULT_FIELDS.index("synthetic")
_result_values = attrgetter(*RESULT_FIELDS)
# Text an answer or error may echo a secret into (a proxy that quotes the request's
# headers): redacted before it is stored, so no output cell carries it either.
_TEXT_FIELDS = tuple(
    RESULT_FIELDS.index(name)
    for name in ("response", "reasoning_content", "tool_calls", "error_message")
)
ROW_COLUMNS = ("fingerprint", "owner_key", *RESULT_FIELDS, "paid_usd", "key_prefix")


def insert_rows(conn: sqlite3.Connection, rows: list[Row]) -> None:
    new, replacing = split_replaced(conn, rows)
    insert_new(conn, ROW_COLUMNS, new)
    for row in replacing:  # after the new ones: a key may repeat within one commit
        replace(conn, ROW_COLUMNS, row)


def _to_micros(when: datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:  # the dispatcher stamps UTC; a naive time is taken as UTC
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MICROSECOND


def _from_micros(micros: int | None) -> datetime | None:
    # Exact to the microsecond for any date before 2200 (a double has 52 mantissa bits),
    # and faster than epoch + timedelta, which matters on a 1M-row resume.
    return None if micros is None else datetime.fromtimestamp(micros / 1e6, UTC)


def to_row(item: RequestResult, redact: Callable[[str], str]) -> Row:
    request, result = item
    values = list(_result_values(result))
    values[_TS] = _to_micros(values[_TS])
    for index in _TEXT_FIELDS:
        if values[index]:
            values[index] = redact(values[index])
    key = fp_key(request.fingerprint)
    return (key, request.key, *values, own_charge(result), key_prefix(key))


def to_answer(row: Row) -> Answer:
    values = list(row[2:])
    values[_TS] = _from_micros(values[_TS])
    values[_SYNTHETIC] = bool(values[_SYNTHETIC])
    return Answer(row[1], Result(*values))


_M009_FIELDS = ("reasks", "cut_off_retried")


@cache
def _lookup_sql(
    params: int, include_failed: bool, compact: bool, marked: bool = True, reasks: bool = True
) -> str:
    # A read-only view of an older file: before m008 no answer was marked synthetic, and
    # before m009 none was re-asked or retried after a cut-off.
    fields = [
        name if (marked or name != "synthetic") and (reasks or name not in _M009_FIELDS) else "0"
        for name in RESULT_FIELDS
    ]
    columns = ", ".join(("fingerprint", "owner_key", *fields))
    failed = "" if include_failed else " AND status != 'error'"
    return f"SELECT {columns} FROM answers {where_keys(params, compact)}{failed}"


def select_answered(
    conn: sqlite3.Connection, fingerprints: Sequence[str], include_failed: bool, compact: bool
) -> set[str]:
    by_key = {fp_key(fp): fp for fp in fingerprints}
    failed = "" if include_failed else " AND status != 'error'"
    found: set[str] = set()
    for chunk in chunks(key_params(list(by_key), compact)):
        sql = f"SELECT fingerprint FROM answers {where_keys(len(chunk), compact)}{failed}"
        # A prefix may also match keys not asked for: only whole keys count.
        found.update(by_key[key] for (key,) in conn.execute(sql, chunk) if key in by_key)
    return found


def select_answers(
    conn: sqlite3.Connection,
    fingerprints: Sequence[str],
    include_failed: bool,
    compact: bool,
    marked: bool = True,
    reasks: bool = True,
) -> dict[str, Answer]:
    by_key = {fp_key(fp): fp for fp in fingerprints}  # dedupe keeps many rows to one probe
    found: dict[str, Answer] = {}
    for chunk in chunks(key_params(list(by_key), compact)):
        sql = _lookup_sql(len(chunk), include_failed, compact, marked, reasks)
        for row in conn.execute(sql, chunk):
            fingerprint = by_key.get(row[0])
            if fingerprint is not None:  # not another key with the same prefix
                found[fingerprint] = to_answer(row)
    return found
