"""The report as one self-contained HTML page: the table and server-side SVG charts.

No script and nothing fetched: every chart is an inline ``<svg>`` of horizontal
bars drawn here (cost per day over more than ``TIMELINE_DAYS`` days: a column per
day on a time axis), so the page opens offline, mails as a few tens of kB and
prints. Each bar carries a ``<title>`` (its value on hover or long-press) and
``data-category``/``data-series``/``data-value`` attributes (what tests and
scrapers read); the figure is also printed at the bar's end. A label too long for
its place wraps onto more lines, never cut. Charts scale with their ``viewBox``
and stack in one column on a narrow screen; the recorded and re-priced cost per
day share one scale, so their bars compare.

The header says when the page was made, over which files, and at which prices.

Every chart is a roll-up of the same pass as the table (``ReportResult.table_by``),
so its numbers equal ``--format json --by ...`` for the same files.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta

import pandas as pd

from batchrun.report.about import about
from batchrun.report.aggregate import TOTAL_LABEL, ReportResult
from batchrun.report.selection import DAY
from batchrun.report.text import MISSING_LABELS, STATUSES, cells, headers, is_numeric

__all__ = [
    "CSS",
    "PALETTE",
    "WIDTH",
    "Chart",
    "charts",
    "format_value",
    "render_html",
    "wrap_label",
]

# Okabe-Ito: told apart with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C8C8C")
WIDTH = 420  # viewBox units; text is 14 units: 11 px on a 390 px phone, 14 px on a laptop
LABEL_W, VALUE_W = 140, 80
LABEL_CHARS = 17  # what fits in LABEL_W at 14 units; longer labels wrap
LINE_H = 15
BAR_H, GAP = 16, 8
TIMELINE_DAYS = 14  # more days than this: cost per day on a time axis
PLOT_H, AXIS_W = 160, 64  # the time axis: plot height, room for the value labels


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
    top: float = math.nan  # the value at full length; NaN: this chart's largest
    timeline: bool = False  # categories are ISO days, drawn as columns on a time axis


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
        repriced = _cost_per_day(result, "repriced_usd", "repriced", title)
        # One scale and one colour per model for both, so a cheaper price reads as
        # shorter bars of the same colour.
        top = max(_top(found[0]), _top(repriced))
        series = tuple(sorted({*found[0].series, *repriced.series}))
        found.insert(1, _with_series(replace(repriced, top=top), series))
        found[0] = _with_series(replace(found[0], top=top), series)
    return found


def _with_series(chart: Chart, series: tuple[str, ...]) -> Chart:
    """``chart`` with ``series`` in this order (NaN where it had none)."""
    at = {name: j for j, name in enumerate(chart.series)}
    values = tuple(
        tuple(row[at[s]] if s in at else math.nan for s in series) for row in chart.values
    )
    return replace(chart, series=series, values=values)


def _top(chart: Chart) -> float:
    totals = [_row_total(r) if chart.stacked else _row_max(r) for r in chart.values]
    return max(totals, default=0.0)


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
    chart = _drop_empty(
        Chart(f"{key}-per-day", title, note, "usd", tuple(series), (), ()),
        cats,
        values,
        stacked=True,
    )
    dated = not MISSING_LABELS.intersection(chart.categories)  # "(failed)": no day known
    return _on_time_axis(chart) if dated and len(chart.categories) > TIMELINE_DAYS else chart


def _on_time_axis(chart: Chart) -> Chart:
    """Every day from the first to the last (none left out: a gap is a day without cost)."""
    days = {
        date.fromisoformat(c): row for c, row in zip(chart.categories, chart.values, strict=True)
    }
    first, last = min(days), max(days)
    every = [first + timedelta(n) for n in range((last - first).days + 1)]
    empty = (math.nan,) * len(chart.series)
    values = tuple(days.get(d, empty) for d in every)
    cats = tuple(d.isoformat() for d in every)
    note = "A column per day; a gap is a day without cost. " + chart.note
    return replace(chart, categories=cats, values=values, timeline=True, note=note)


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
    groups = groups[~groups["error_type"].isin(MISSING_LABELS)]
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
    columns = ["cost_per_1k_answered", *(["repriced_per_1k_answered"] if result.repriced else [])]
    series = ("recorded", "re-priced")[: len(columns)]
    values = [tuple(float(v) for v in row) for row in table[columns].to_numpy()]
    by = ", ".join(keys) or "all rows"
    title = f"Cost per 1,000 answered rows, by {by}"
    note = "Per 1,000 answered (ok) rows that have a price; other rows are not counted."
    chart = Chart("cost-per-1k", title, note, "usd", series, (), ())
    return _drop_empty(chart, cats, values, stacked=False)


def _groups(table: pd.DataFrame) -> pd.DataFrame:
    return table.iloc[:-1]  # every row but TOTAL


def _labels(column: pd.Series) -> list[str]:
    return [str(v) for v in column]  # null keys are already named, e.g. "(unanswered)"


def _drop_empty(
    chart: Chart, cats: Sequence[str], values: Sequence[tuple[float, ...]], *, stacked: bool
) -> Chart:
    """Without the categories and series that have no value at all (e.g. unpriced models)."""
    keep_cat = [i for i, row in enumerate(values) if not all(math.isnan(v) for v in row)]
    width = len(chart.series)
    keep_s = [j for j in range(width) if any(not math.isnan(values[i][j]) for i in keep_cat)]
    return replace(
        chart,
        series=tuple(chart.series[j] for j in keep_s),
        categories=tuple(cats[i] for i in keep_cat),
        values=tuple(tuple(values[i][j] for j in keep_s) for i in keep_cat),
        stacked=stacked,
    )


# ------------------------------------------------------------------- drawing


def _svg(chart: Chart) -> str:
    if not chart.categories:
        return (
            f'<svg viewBox="0 0 {WIDTH} 32" width="{WIDTH}" role="img" class="empty">'
            '<text x="0" y="20">none in this selection</text></svg>'
        )
    if chart.timeline:
        return _timeline_svg(chart)
    per_row = BAR_H if chart.stacked else BAR_H * len(chart.series)
    wrapped = [wrap_label(cat) for cat in chart.categories]
    heights = [max(per_row, len(lines) * LINE_H) for lines in wrapped]
    height = sum(heights) + GAP * (len(heights) + 1)
    top = _top(chart) if math.isnan(chart.top) else chart.top
    scale = (WIDTH - LABEL_W - VALUE_W) / (top or 1.0)
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" role="img" '
        f'aria-label="{_e(chart.title)}" data-chart="{_e(chart.key)}">',
        f'<line x1="{LABEL_W}" y1="0" x2="{LABEL_W}" y2="{height}" class="axis"/>',
    ]
    y = float(GAP)
    for cat, lines, row_h, row in zip(
        chart.categories, wrapped, heights, chart.values, strict=True
    ):
        parts.append(_row_label(cat, lines, y + row_h / 2))
        parts.extend(_bars(chart, cat, row, y + (row_h - per_row) / 2, scale))
        y += row_h + GAP
    parts.append("</svg>")
    return "".join(parts)


def wrap_label(label: str) -> list[str]:
    """A label in lines of at most ``LABEL_CHARS``, broken after " · " first; nothing cut."""
    lines: list[str] = []
    for part in label.split(" · "):
        lines.extend(textwrap.wrap(part, LABEL_CHARS, break_on_hyphens=False) or [part])
    return lines


def _row_total(row: Sequence[float]) -> float:
    return sum(v for v in row if not math.isnan(v))


def _row_max(row: Sequence[float]) -> float:
    return max((v for v in row if not math.isnan(v)), default=0.0)


def _row_label(text: str, lines: Sequence[str], middle: float) -> str:
    first = middle - (len(lines) - 1) * LINE_H / 2
    spans = "".join(
        f'<tspan x="{LABEL_W - 6}" y="{first + k * LINE_H:.1f}">{_e(line)}</tspan>'
        for k, line in enumerate(lines)
    )
    return f'<text class="cat" data-label="{_e(text)}"><title>{_e(text)}</title>{spans}</text>'


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


def _timeline_svg(chart: Chart) -> str:
    """A column per day, stacked by series, on a time axis with the months labelled."""
    step = (WIDTH - AXIS_W - 4) / len(chart.categories)
    top = _top(chart) if math.isnan(chart.top) else chart.top
    scale, base = PLOT_H / (top or 1.0), GAP + PLOT_H
    height = base + 2 * LINE_H + GAP
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" role="img" '
        f'aria-label="{_e(chart.title)}" data-chart="{_e(chart.key)}" class="timeline">',
        f'<line x1="{AXIS_W}" y1="{GAP}" x2="{WIDTH}" y2="{GAP}" class="grid"/>',
        f'<text x="{AXIS_W - 4}" y="{GAP}" class="cat">{_e(format_value(chart.unit, top))}</text>',
        f'<text x="{AXIS_W - 4}" y="{base}" class="cat">0</text>',
        f'<line x1="{AXIS_W}" y1="{base}" x2="{WIDTH}" y2="{base}" class="axis"/>',
        *_months(chart.categories, step, base),
    ]
    for i, (day, row) in enumerate(zip(chart.categories, chart.values, strict=True)):
        y, x = float(base), AXIS_W + i * step
        total = format_value(chart.unit, _row_total(row))
        for j, (name, value) in enumerate(zip(chart.series, row, strict=True)):
            if math.isnan(value):
                continue
            h = max(value * scale, 0.0)
            y -= h
            tip = f"{day} · {name}: {format_value(chart.unit, value)} (day: {total})"
            parts.append(
                f'<rect x="{x + step * 0.1:.2f}" y="{y:.2f}" width="{step * 0.8:.2f}" '
                f'height="{h:.2f}" fill="{PALETTE[j % len(PALETTE)]}" data-category="{day}" '
                f'data-series="{_e(name)}" data-value="{value!r}"><title>{_e(tip)}</title></rect>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _months(days: Sequence[str], step: float, base: float) -> list[str]:
    """A tick where each month starts and its name under its days (with the year where
    the year starts or the axis does), when there is room for it."""
    parts: list[str] = []
    starts = [i for i, d in enumerate(days) if i == 0 or d.endswith("-01")]
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(days)
        x, first = AXIS_W + start * step, date.fromisoformat(days[start])
        parts.append(f'<line x1="{x:.2f}" y1="{base}" x2="{x:.2f}" y2="{base + 6}" class="axis"/>')
        name = f"{first:%b %Y}" if n == 0 or first.month == 1 else f"{first:%b}"
        room = (end - start) * step
        if room < 9 * len(name):
            name = f"{first:%b}" if room >= 30 else ""
        if name:
            middle = AXIS_W + (start + end) / 2 * step
            parts.append(
                f'<text x="{middle:.2f}" y="{base + LINE_H}" class="month">{_e(name)}</text>'
            )
    return parts


def _value_label(x: float, top: float, text: str, cat: str, series: str) -> str:
    return (
        f'<text x="{x + 4:.2f}" y="{top + BAR_H / 2:.1f}" class="val" '
        f'data-category="{_e(cat)}" data-series="{_e(series)}">{_e(text)}</text>'
    )


# ---------------------------------------------------------------------- page


def render_html(
    result: ReportResult, *, title: str = "batchrun cost report", pricing_name: str | None = None
) -> str:
    """The whole page: summary figures, what it covers, the charts, then the same table
    as ``table``. ``pricing_name`` names the ``--pricing`` file the page cites."""
    sections = "".join(_section(c) for c in charts(result))
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1>{_synthetic_banner(result)}{_facts(result)}"
        f"{about(result, pricing_name)}</header>"
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
    days = [d for d in _labels(_groups(result.table_by([DAY]))[DAY]) if d not in MISSING_LABELS]
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


CSS = """
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
svg .axis{stroke:#999;stroke-width:1}svg .grid{stroke:#ddd;stroke-width:1}
svg .month{text-anchor:middle;font-size:12px;fill:#444}
.about dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 12px;margin:0}
.about dt{color:#555}.about dd{margin:0;overflow-wrap:anywhere}
.about ul{margin:0;padding-left:1.2em}
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
