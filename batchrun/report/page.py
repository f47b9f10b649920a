"""The report as one self-contained HTML page: the table and server-side SVG charts.

No script and nothing fetched: every chart is an inline ``<svg>`` of horizontal
bars drawn here, so the page opens offline, mails as a few tens of kB and
prints. Each bar carries a ``<title>`` (its value on hover or long-press) and
``data-category``/``data-series``/``data-value`` attributes (what tests and
scrapers read); the figure is also printed at the bar's end. Charts scale with
their ``viewBox`` and stack in one column on a narrow screen.

Every chart is a roll-up of the same pass as the table (``ReportResult.table_by``),
so its numbers equal ``--format json --by ...`` for the same files.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from batchrun.report.aggregate import TOTAL_LABEL, ReportResult
from batchrun.report.selection import DAY
from batchrun.report.text import STATUSES, cells, headers, is_numeric

__all__ = ["Chart", "charts", "format_value", "render_html"]

# Okabe-Ito: told apart with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C8C8C")
WIDTH = 420  # viewBox units; text is 14 units: 11 px on a 390 px phone, 14 px on a laptop
LABEL_W, VALUE_W = 140, 80
LABEL_CHARS = 17  # what fits in LABEL_W at 14 units; longer labels are cut (full on hover)
BAR_H, GAP = 16, 8
NULL_LABEL = "(null)"


@dataclass(frozen=True, slots=True)
class Chart:
    """Horizontal bars: one row per category, one bar (or stacked segment) per series."""

    key: str
    title: str
    note: str
    unit: str  # "usd", "count" or "ms"
    series: tuple[str, ...]
    categories: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]  # [category][series]; NaN: no value
    stacked: bool = False


def format_value(unit: str, value: float) -> str:
    """A figure as the page prints it."""
    if math.isnan(value):
        return "n/a"
    if unit == "usd":
        return f"${value:,.2f}" if abs(value) >= 100 else f"${value:,.4f}"
    if unit == "ms":
        return f"{value:,.0f} ms"
    return f"{round(value):,}"


# ------------------------------------------------------------------ the charts


def charts(result: ReportResult) -> list[Chart]:
    """The page's charts, in order, from the report's one pass."""
    found = [
        _cost_per_day(result, "cost_usd", "cost", "Cost per day, by model"),
        _tokens(result.table),
        _rows_by_status(result.table),
        _errors(result.table_by(["error_type"])),
        _latency(result.table_by(["model"])),
        _cost_per_1k(result),
    ]
    if result.repriced:
        title = "Re-priced cost per day, by model"
        found.insert(1, _cost_per_day(result, "repriced_usd", "repriced", title))
    return found


def _cost_per_day(result: ReportResult, column: str, key: str, title: str) -> Chart:
    table = _groups(result.table_by([DAY, "model"]))
    days = _labels(table[DAY])
    models = _labels(table["model"])
    cats, series = list(dict.fromkeys(days)), sorted(set(models))
    grid = {(d, m): float(v) for d, m, v in zip(days, models, table[column], strict=True)}
    values = [tuple(grid.get((d, m), math.nan) for m in series) for d in cats]
    note = "Day: the date= partition, else the UTC day of completed_at. Unpriced rows left out."
    if column == "repriced_usd":
        note = "At the --pricing file's prices, from each row's billed tokens. " + note
    return _drop_empty(
        Chart(f"{key}-per-day", title, note, "usd", tuple(series), (), ()),
        cats,
        values,
        stacked=True,
    )


def _tokens(table: pd.DataFrame) -> Chart:
    t = table.iloc[-1]
    kinds = {
        "uncached prompt": t["prompt_tokens"] - t["cached_tokens"],
        "cached prompt": t["cached_tokens"],
        "completion text": t["completion_tokens"] - t["reasoning_tokens"],
        "reasoning": t["reasoning_tokens"],
    }
    note = "Billed tokens: each answer once; rows that reused an answer are left out."
    return Chart(
        "tokens", "Tokens by kind", note, "count", ("tokens",), tuple(kinds),
        tuple((float(v),) for v in kinds.values()),
    )  # fmt: skip


def _rows_by_status(table: pd.DataFrame) -> Chart:
    t = table.iloc[-1]
    names = (*STATUSES, "shared")
    note = "shared: rows that reused another row's answer (also counted under ok)."
    values = tuple((float(t[s]),) for s in names)
    return Chart("status", "Rows by status", note, "count", ("rows",), names, values)


def _errors(table: pd.DataFrame) -> Chart:
    groups = _groups(table)
    groups = groups[groups["error_type"].notna()]
    values = tuple((float(v),) for v in groups["rows"])
    cats = tuple(str(v) for v in groups["error_type"])
    return Chart("errors", "Rows by error_type", "", "count", ("rows",), cats, values)


def _latency(table: pd.DataFrame) -> Chart:
    groups = _groups(table)
    cats = _labels(groups["model"])
    p50, p95 = groups["latency_p50_ms"], groups["latency_p95_ms"]
    values = [(float(a), float(b)) for a, b in zip(p50, p95, strict=True)]
    chart = Chart("latency", "Latency by model", "Of ok rows.", "ms", ("p50", "p95"), (), ())
    return _drop_empty(chart, cats, values, stacked=False)


def _cost_per_1k(result: ReportResult) -> Chart:
    table = result.table
    keys = list(result.by)
    columns_of_labels = [_labels(_groups(table)[k]) for k in keys]
    cats = [*(" · ".join(parts) for parts in zip(*columns_of_labels, strict=True)), TOTAL_LABEL]
    columns = ["cost_per_1k_rows", *(["repriced_per_1k_rows"] if result.repriced else [])]
    series = ("recorded", "re-priced")[: len(columns)]
    values = [tuple(float(v) for v in row) for row in table[columns].to_numpy()]
    by = ", ".join(keys) or "all rows"
    chart = Chart("cost-per-1k", f"Cost per 1,000 rows, by {by}", "", "usd", series, (), ())
    return _drop_empty(chart, cats, values, stacked=False)


def _groups(table: pd.DataFrame) -> pd.DataFrame:
    return table.iloc[:-1]  # every row but TOTAL


def _label(value: object) -> str:
    return NULL_LABEL if value is None or value is pd.NA else str(value)


def _labels(column: pd.Series) -> list[str]:
    return [_label(None if pd.isna(v) else v) for v in column]


def _drop_empty(
    chart: Chart, cats: Sequence[str], values: Sequence[tuple[float, ...]], *, stacked: bool
) -> Chart:
    """Without the categories and series that have no value at all (e.g. unpriced models)."""
    keep_cat = [i for i, row in enumerate(values) if not all(math.isnan(v) for v in row)]
    width = len(chart.series)
    keep_s = [j for j in range(width) if any(not math.isnan(values[i][j]) for i in keep_cat)]
    return Chart(
        chart.key, chart.title, chart.note, chart.unit,
        tuple(chart.series[j] for j in keep_s),
        tuple(cats[i] for i in keep_cat),
        tuple(tuple(values[i][j] for j in keep_s) for i in keep_cat),
        stacked,
    )  # fmt: skip


# ------------------------------------------------------------------- drawing


def _svg(chart: Chart) -> str:
    if not chart.categories:
        return (
            f'<svg viewBox="0 0 {WIDTH} 32" width="{WIDTH}" role="img" class="empty">'
            '<text x="0" y="20">none in this selection</text></svg>'
        )
    per_row = BAR_H if chart.stacked else BAR_H * len(chart.series)
    height = len(chart.categories) * (per_row + GAP) + GAP
    totals = [_row_total(row) if chart.stacked else _row_max(row) for row in chart.values]
    scale = (WIDTH - LABEL_W - VALUE_W) / (max(totals) or 1.0)
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" role="img" '
        f'aria-label="{_e(chart.title)}" data-chart="{_e(chart.key)}">',
        f'<line x1="{LABEL_W}" y1="0" x2="{LABEL_W}" y2="{height}" class="axis"/>',
    ]
    for i, (cat, row) in enumerate(zip(chart.categories, chart.values, strict=True)):
        y = GAP + i * (per_row + GAP)
        parts.append(_row_label(cat, y + per_row / 2))
        parts.extend(_bars(chart, cat, row, y, scale))
    parts.append("</svg>")
    return "".join(parts)


def _row_total(row: Sequence[float]) -> float:
    return sum(v for v in row if not math.isnan(v))


def _row_max(row: Sequence[float]) -> float:
    return max((v for v in row if not math.isnan(v)), default=0.0)


def _row_label(text: str, middle: float) -> str:
    short = text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
    return (
        f'<text x="{LABEL_W - 6}" y="{middle:.1f}" class="cat">'
        f"<title>{_e(text)}</title>{_e(short)}</text>"
    )


def _bars(chart: Chart, cat: str, row: Sequence[float], y: float, scale: float) -> list[str]:
    parts: list[str] = []
    x = float(LABEL_W)
    for j, (name, value) in enumerate(zip(chart.series, row, strict=True)):
        if math.isnan(value):
            continue
        top = y if chart.stacked else y + j * BAR_H
        width = max(value * scale, 0.0)
        shown = format_value(chart.unit, value)
        tip = f"{cat} · {name}: {shown}" if len(chart.series) > 1 else f"{cat}: {shown}"
        parts.append(
            f'<rect x="{x:.2f}" y="{top + 1:.1f}" width="{width:.2f}" height="{BAR_H - 2}" '
            f'fill="{PALETTE[j % len(PALETTE)]}" data-category="{_e(cat)}" '
            f'data-series="{_e(name)}" data-value="{value!r}"><title>{_e(tip)}</title></rect>'
        )
        if chart.stacked:
            x += width
        else:
            parts.append(_value_label(x + width, top, shown, cat, name))
    if chart.stacked:
        parts.append(_value_label(x, y, format_value(chart.unit, _row_total(row)), cat, "total"))
    return parts


def _value_label(x: float, top: float, text: str, cat: str, series: str) -> str:
    return (
        f'<text x="{x + 4:.2f}" y="{top + BAR_H / 2:.1f}" class="val" '
        f'data-category="{_e(cat)}" data-series="{_e(series)}">{_e(text)}</text>'
    )


# ---------------------------------------------------------------------- page


def render_html(result: ReportResult, *, title: str = "batchrun cost report") -> str:
    """The whole page: summary figures, the charts, then the same table as ``table``."""
    sections = "".join(_section(c) for c in charts(result))
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1>{_synthetic_banner(result)}{_facts(result)}</header>"
        f'<main><div class="charts">{sections}</div>'
        f'<section class="card wide"><h2>Table</h2>{_table(result.table)}</section>'
        f"{_skipped(result)}</main></body></html>\n"
    )


def _synthetic_banner(result: ReportResult) -> str:
    """A banner over the figures when some of the answers they sum are synthetic."""
    count = result.synthetic_rows
    if not count:
        return ""
    total = int(result.table["rows"].iloc[-1])
    return (
        '<p class="synthetic" role="alert">SYNTHETIC: '
        f"{count:,} of these {total:,} rows hold answers from batchrun's emulator, "
        "not from a real API; their tokens and cost were never billed.</p>"
    )


def _facts(result: ReportResult) -> str:
    t = result.table.iloc[-1]
    days = [d for d in _labels(_groups(result.table_by([DAY]))[DAY]) if d != NULL_LABEL]
    figures = [
        ("rows", format_value("count", float(t["rows"]))),
        ("cost", format_value("usd", float(t["cost_usd"]))),
        *(
            [("re-priced", format_value("usd", float(t["repriced_usd"])))]
            if result.repriced
            else []
        ),
        (
            "billed tokens",
            format_value("count", float(t["prompt_tokens"] + t["completion_tokens"])),
        ),
        ("days", " – ".join(dict.fromkeys([days[0], days[-1]])) if days else "n/a"),
        ("files", f"{len(result.files):,}"),
    ]
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in figures)
    return f'<dl class="facts">{items}</dl>'


def _section(chart: Chart) -> str:
    legend = ""
    if len(chart.series) > 1 or chart.stacked:  # stacked: the series are models; name even one
        items = "".join(
            f'<li><span style="background:{PALETTE[j % len(PALETTE)]}"></span>{_e(s)}</li>'
            for j, s in enumerate(chart.series)
        )
        legend = f'<ul class="legend">{items}</ul>'
    note = f'<p class="note">{_e(chart.note)}</p>' if chart.note else ""
    return (
        f'<section class="card" id="{_e(chart.key)}"><h2>{_e(chart.title)}</h2>'
        f"{legend}{_svg(chart)}{note}</section>"
    )


def _table(df: pd.DataFrame) -> str:
    numeric = [is_numeric(str(c)) for c in df.columns]
    head = "".join(f"<th>{_e(h)}</th>" for h in headers(df))
    rows = []
    for r, row in enumerate(cells(df)):
        tds = "".join(
            f"<td{' class=num' if n else ''}>{_e(c)}</td>"
            for c, n in zip(row, numeric, strict=True)
        )
        rows.append(f'<tr class="total">{tds}</tr>' if r == len(df) - 1 else f"<tr>{tds}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _skipped(result: ReportResult) -> str:
    if not result.skipped:
        return ""
    items = "".join(f"<li>{_e(str(s))}</li>" for s in result.skipped)
    return f'<section class="card wide"><h2>Skipped files</h2><ul>{items}</ul></section>'


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_CSS = """
*{box-sizing:border-box}
.synthetic{margin:8px 0;padding:8px 12px;background:#fff3cd;border:1px solid #d39e00;
font-weight:600}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1d1d1f;background:#f4f5f7}
header,main{max-width:1320px;margin:0 auto;padding:12px}
h1{font-size:1.4em;margin:8px 0}
h2{font-size:1em;margin:0 0 8px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px;margin:0}
.facts div{background:#fff;border-radius:8px;padding:8px 12px}
.facts dt{font-size:.8em;color:#555}.facts dd{margin:0;font-size:1.2em;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,400px),1fr));gap:12px}
.card{background:#fff;border-radius:8px;padding:12px;min-width:0}
.wide{margin-top:12px}
svg{display:block;max-width:100%;height:auto;font-size:14px}
svg text{fill:#1d1d1f;dominant-baseline:central}
svg .cat{text-anchor:end}svg .val{font-size:13px;fill:#444}
svg .axis{stroke:#999;stroke-width:1}
svg rect:hover{opacity:.8}
.legend{list-style:none;margin:0 0 6px;padding:0;display:flex;flex-wrap:wrap;gap:4px 12px;
font-size:.9em}
.legend span{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.note{font-size:.8em;color:#555;margin:6px 0 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.85em;white-space:nowrap}
th,td{padding:4px 8px;border-bottom:1px solid #e3e3e3;text-align:left}
th{background:#fafafa;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600;border-top:2px solid #999}
"""
