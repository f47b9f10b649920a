"""The report table as text: aligned ``table``, ``csv``, ``json`` and ``markdown``.

The HTML page (``report.page``) shows the same cells as ``table``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from batchrun._errors import JobError

__all__ = ["FORMATS", "STATUSES", "cells", "headers", "is_numeric", "render"]

FORMATS: tuple[str, ...] = ("table", "csv", "json", "markdown")
STATUSES: tuple[str, ...] = ("ok", "error", "invalid", "pending")


def render(df: pd.DataFrame, fmt: str) -> str:
    """Render a report table as ``table`` (aligned text), ``csv``, ``json`` or ``markdown``.

    ``csv`` and ``json`` keep full-precision numbers (NaN becomes empty / null);
    ``table`` and ``markdown`` show thousands separators, cost with 4 decimals
    and "n/a" where a value does not exist.
    """
    if fmt == "csv":
        return str(df.to_csv(index=False))
    if fmt == "json":
        return json.dumps([_json_record(r) for r in df.to_dict(orient="records")], indent=2)
    if fmt == "table":
        return _render_text(df)
    if fmt == "markdown":
        return _render_markdown(df)
    raise JobError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")


_TOKENS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")
_INT_COLUMNS = frozenset({"rows", *STATUSES, "shared", "synthetic", *_TOKENS, "unpriced"})
_REPRICED = frozenset({"repriced_usd", "repriced_per_1k_rows"})
_COST_COLUMNS = frozenset({"cost_usd", "cost_per_1k_rows", *_REPRICED})
_LATENCY_COLUMNS = frozenset({"latency_p50_ms", "latency_p95_ms"})


# Short headers for the human formats; csv and json keep the column names.
_LABELS = {
    "prompt_tokens": "prompt",
    "cached_tokens": "cached",
    "completion_tokens": "completion",
    "reasoning_tokens": "reasoning",
    "cost_per_1k_rows": "usd/1k rows",
    "repriced_usd": "repriced usd",
    "repriced_per_1k_rows": "repriced/1k rows",
    "latency_p50_ms": "p50 ms",
    "latency_p95_ms": "p95 ms",
}


def headers(df: pd.DataFrame) -> list[str]:
    return [_LABELS.get(str(c), str(c)) for c in df.columns]


def _cell(column: str, value: Any, *, null: str = "(null)") -> str:
    """One value as people read it: separators, 4-decimal cost, n/a for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a" if column in _COST_COLUMNS | _LATENCY_COLUMNS else null
    if column in _COST_COLUMNS:
        return f"{value:,.4f}"
    if column in _LATENCY_COLUMNS:
        return f"{value:,.1f}"
    if column in _INT_COLUMNS:
        return f"{int(value):,}"
    return str(value)


def is_numeric(column: str) -> bool:
    return column in _INT_COLUMNS | _COST_COLUMNS | _LATENCY_COLUMNS


def cells(df: pd.DataFrame) -> list[list[str]]:
    columns, rows = list(df.columns), list(df.to_numpy())
    # A null group key is data ("(null)": pending rows have no model); the
    # TOTAL row's other key cells are merely unused, so they stay blank.
    cells = [[_cell(c, v) for c, v in zip(columns, row, strict=True)] for row in rows[:-1]]
    last = [_cell(c, v, null="") for c, v in zip(columns, rows[-1], strict=True)] if rows else []
    return [*cells, last] if rows else cells


def _render_text(df: pd.DataFrame) -> str:
    header, body = headers(df), cells(df)
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]

    def line(cells: Iterable[str]) -> str:
        parts = zip(cells, widths, df.columns, strict=True)
        return "  ".join(c.rjust(w) if is_numeric(n) else c.ljust(w) for c, w, n in parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *map(line, body[:-1]), rule, line(body[-1])]
    return "\n".join(lines) + "\n"


def _render_markdown(df: pd.DataFrame) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---:" if is_numeric(c) else "---" for c in df.columns]
    rows = [line(headers(df)), "|" + "|".join(align) + "|", *map(line, cells(df))]
    return "\n".join(rows) + "\n"


def _json_record(record: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): _json_value(v) for k, v in record.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # dates and other partition values
