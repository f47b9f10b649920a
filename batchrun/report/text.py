"""The report table as text: aligned ``table``, ``csv``, ``json`` and ``markdown``.

The HTML page (``report.page``) shows the same cells as ``table``. What a renderer
embeds from the data is escaped for its format: Markdown and HTML special characters,
and a leading ``=``, ``+``, ``-``, ``@`` in a CSV cell (a spreadsheet would run it as a
formula) gets a ``'`` in front.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from batchrun._errors import JobError

__all__ = [
    "FORMATS", "MISSING_LABELS", "STATUSES", "TOTAL_LABEL", "cells", "headers", "is_numeric",
    "render",
]  # fmt: skip

FORMATS: tuple[str, ...] = ("table", "csv", "json", "markdown")
STATUSES: tuple[str, ...] = ("ok", "error", "invalid", "pending")
TOTAL_LABEL = "TOTAL"
# What a null group key reads as (``report.aggregate`` names them); sorted last.
MISSING_LABELS = frozenset({"(unanswered)", "(invalid)", "(failed)", "(none)", "(unknown)"})
NO_PRICE = "no price"


def render(
    df: pd.DataFrame,
    fmt: str,
    *,
    generated_at: datetime | None = None,
    inputs: Sequence[str] = (),
) -> str:
    """Render a report table as ``table`` (aligned text), ``csv``, ``json`` or ``markdown``.

    ``csv`` and ``json`` keep full-precision numbers (NaN becomes empty / null) and keep
    the total apart from the groups: ``json`` is ``{"groups": [...], "total": {...},
    "generated_at": ..., "inputs": [...]}``; ``csv`` has a ``kind`` column, ``group``
    or ``total``. ``table`` and ``markdown`` show thousands separators, cost with 4
    decimals, "n/a" where a value does not exist and "no price" where answered rows
    had no price.
    """
    if fmt == "csv":
        return _render_csv(df)
    if fmt == "json":
        return _render_json(df, generated_at, inputs)
    if fmt == "table":
        return _render_text(df)
    if fmt == "markdown":
        return _render_markdown(df)
    raise JobError(f"unknown report format {fmt!r}; allowed: {', '.join(FORMATS)}")


_TOKENS = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")
_INT_COLUMNS = frozenset({"rows", *STATUSES, "shared", "synthetic", *_TOKENS, "unpriced"})
_REPRICED = frozenset({"repriced_usd", "repriced_per_1k_answered"})
_COST_COLUMNS = frozenset({"cost_usd", "cost_per_1k_answered", *_REPRICED})
_LATENCY_COLUMNS = frozenset({"latency_p50_ms", "latency_p95_ms"})


# Short headers for the human formats; csv and json keep the column names.
_LABELS = {
    "prompt_tokens": "prompt",
    "cached_tokens": "cached",
    "completion_tokens": "completion",
    "reasoning_tokens": "reasoning",
    "cost_per_1k_answered": "usd/1k answered",
    "repriced_usd": "repriced usd",
    "repriced_per_1k_answered": "repriced/1k answered",
    "latency_p50_ms": "p50 ms",
    "latency_p95_ms": "p95 ms",
}


def headers(df: pd.DataFrame) -> list[str]:
    return [_LABELS.get(str(c), str(c)) for c in df.columns]


def _cell(column: str, value: Any, answered: bool) -> str:
    """One value as people read it: separators, 4-decimal cost, n/a for missing, "no
    price" for the cost of answered rows whose model has no price."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if column in _COST_COLUMNS:
            return NO_PRICE if answered else "n/a"
        return "n/a" if column in _LATENCY_COLUMNS else ""
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
    """Every row's cells as ``table`` shows them (the TOTAL row's other key cells blank)."""
    columns = [str(c) for c in df.columns]
    answered = df["ok"] > 0 if "ok" in df.columns else pd.Series(False, index=df.index)
    return [
        [_cell(c, v, bool(a)) for c, v in zip(columns, row, strict=True)]
        for row, a in zip(df.to_numpy(), answered, strict=True)
    ]


def _render_text(df: pd.DataFrame) -> str:
    header, body = headers(df), cells(df)
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]

    def line(cells: Iterable[str]) -> str:
        parts = zip(cells, widths, df.columns, strict=True)
        return "  ".join(c.rjust(w) if is_numeric(n) else c.ljust(w) for c, w, n in parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *map(line, body[:-1]), rule, line(body[-1])]
    return "\n".join(lines) + "\n"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]{}#!~|])")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _markdown(text: str) -> str:
    """A cell's text shown literally: Markdown syntax backslashed, HTML as entities."""
    return html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", text), quote=False)


def _render_markdown(df: pd.DataFrame) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(map(_markdown, cells)) + " |"

    align = ["---:" if is_numeric(c) else "---" for c in df.columns]
    rows = [line(headers(df)), "|" + "|".join(align) + "|", *map(line, cells(df))]
    return "\n".join(rows) + "\n"


def _key_columns(df: pd.DataFrame) -> list[str]:
    return [str(c) for c in df.columns if not is_numeric(str(c))]


def _render_json(df: pd.DataFrame, generated_at: datetime | None, inputs: Sequence[str]) -> str:
    records = [_json_record(r) for r in df.to_dict(orient="records")]
    keys = set(_key_columns(df))
    document = {
        "groups": records[:-1],
        "total": {k: v for k, v in records[-1].items() if k not in keys} if records else {},
        "generated_at": generated_at.isoformat() if generated_at else None,
        "inputs": list(inputs),
    }
    return json.dumps(document, indent=2)


def _render_csv(df: pd.DataFrame) -> str:
    """One header; ``kind`` says ``group`` or ``total``, the total's key cells are empty."""
    out = df.copy()
    keys = _key_columns(df)
    if len(out):
        out.loc[out.index[-1], keys] = None
    for column in keys:  # as objects: a map would turn whole numbers with a blank into floats
        cells = [_spreadsheet_safe(v) for v in out[column]]
        out[column] = pd.Series(cells, index=out.index, dtype=object)
    out.columns = [_spreadsheet_safe(str(c)) for c in out.columns]
    kinds = ["group"] * (len(out) - 1) + ["total"] if len(out) else []
    out.insert(0, "kind", kinds, allow_duplicates=True)  # a --by column may be called kind
    return str(out.to_csv(index=False))


def _spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would take for a formula, with a leading ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


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
