"""Parsed columns that come back empty: a column null in more than a tenth of the ``ok``
rows is named, with the count, at the end of a run and in a pilot's plan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

EMPTY_SHARE = 0.1


def count_nulls(counts: Counter[str], columns: Iterable[str], values: Mapping[str, Any]) -> None:
    """Add one ok row's parsed ``values`` to ``counts`` (column -> null rows)."""
    for name in columns:
        if values.get(name) is None:
            counts[name] += 1


def empty_columns(nulls: Mapping[str, int], ok_rows: int) -> list[str]:
    """One line per column null in more than a tenth of ``ok_rows``.

    >>> empty_columns({"topic": 200, "label": 3}, 200)
    ["column 'topic' null in 200/200 ok rows: the model's JSON has no value under 'topic'"]
    """
    return [
        f"column {name!r} null in {count}/{ok_rows} ok rows:"
        f" the model's JSON has no value under {name!r}"
        for name, count in nulls.items()
        if ok_rows and count > EMPTY_SHARE * ok_rows
    ]
