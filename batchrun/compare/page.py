"""A ``Comparison`` as one self-contained HTML page, in the report's style.

No script and nothing fetched: the per-variant table (the recommendation marked),
then the score against cost per 1,000 rows as an inline SVG scatter (one point per
variant; its score is the mean over the compared columns, as the recommendation
weighs it), then per variant and column a confusion-matrix heatmap (cells shaded by
count, the count printed, truth down the side, predicted across) and the per-class
figures. Every cell and point carries a ``<title>`` (full names on hover or
long-press) and ``data-*`` attributes with the exact figures (what tests and scrapers
read); they equal ``--format json``'s.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime

from batchrun.compare.compute import Comparison, VariantScore
from batchrun.compare.render import recommendation, summary_row
from batchrun.report.page import CSS, PALETTE, WIDTH, format_value

__all__ = ["render_html"]

SIDE_W, TOP_H = 120, 112  # heatmap: room for the truth labels, the rotated predicted labels
SIDE_CHARS, TOP_CHARS = 15, 16  # what fits there at 14 units; longer names end in "…"
MAX_CELL = 56
PLOT = (56, 16, 32, 48)  # scatter margins: left, top, right, bottom
PLOT_H = 260
PICK = "#D55E00"


def render_html(comparison: Comparison, *, title: str = "batchrun compare") -> str:
    """The whole page: what was compared, the table, the scatter, the heatmaps."""
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    heatmaps = "".join(_heatmap_section(r, comparison.measure) for r in comparison.results)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1>{_facts(comparison, made)}"
        f'<p class="pick">{_e(recommendation(comparison))}</p></header>'
        f'<main><section class="card wide" id="variants"><h2>Variants</h2>'
        f"{_table(comparison)}</section>"
        f'<section class="card wide" id="scatter"><h2>{_e(comparison.measure.capitalize())}'
        f" against cost per 1,000 rows</h2>{_scatter(comparison)}</section>"
        f'<div class="charts">{heatmaps}</div></main></body></html>\n'
    )


def _facts(comparison: Comparison, made: str) -> str:
    variants = list(dict.fromkeys(r.variant for r in comparison.results))
    columns = list(dict.fromkeys(r.column for r in comparison.results))
    figures = [
        ("variants", f"{len(variants):,}"),
        ("columns", ", ".join(columns)),
        ("measured as", comparison.measure),
        ("within", f"{comparison.within:g} points"),
        ("recommended", comparison.recommended or "none"),
        ("made", made),
    ]
    if comparison.disagreements is not None:
        figures.append(("disagreements written", f"{comparison.disagreements:,} rows"))
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in figures)
    return f'<dl class="facts">{items}</dl>'


# ---------------------------------------------------------------------- the table


def _table(comparison: Comparison) -> str:
    head = ["variant", "column", "rows", "valid", comparison.measure, "kappa"]
    head += ["cost_usd", "usd/1k rows", ""]
    keys = [None, None, "rows", "valid", comparison.measure, "kappa", "cost_usd"]
    keys += ["cost_per_1k_rows", None]
    rows = []
    for result in comparison.results:
        record = result.to_dict()
        tds = []
        for key, cell in zip(keys, _cells(result), strict=True):
            if key is None:
                tds.append(f"<td>{_e(cell)}</td>")
            else:
                tds.append(f'<td class="num" data-key="{key}" data-value="{record[key]!r}">'
                           f"{_e(cell)}</td>")  # fmt: skip
        mark = ' class="recommended"' if result.recommended else ""
        rows.append(
            f'<tr{mark} data-variant="{_e(result.variant)}" data-column="{_e(result.column)}">'
            f"{''.join(tds)}</tr>"
        )
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    table = f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _cells(r: VariantScore) -> list[str]:
    return summary_row(r, "★ recommended")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


# -------------------------------------------------------------------- the scatter


def _scatter(comparison: Comparison) -> str:
    """One point per variant: its mean score over the columns against its cost per 1k rows."""
    points: list[tuple[str, float, float, bool]] = []
    left_out: list[str] = []
    for variant in dict.fromkeys(r.variant for r in comparison.results):
        mine = [r for r in comparison.results if r.variant == variant]
        known = [r.score for r in mine if r.score is not None and not math.isnan(r.score)]
        cost = mine[0].cost_per_1k_rows
        if cost is None or not known:
            left_out.append(variant)
            continue
        points.append((variant, cost, sum(known) / len(known), mine[0].recommended))
    note = ""
    if left_out:
        note = f'<p class="note">Not drawn (unpriced or unscored): {_e(", ".join(left_out))}</p>'
    if not points:
        return (
            f'<svg viewBox="0 0 {WIDTH} 32" width="{WIDTH}" role="img" class="empty">'
            f'<text x="0" y="20">no variant has both a cost and a score</text></svg>{note}'
        )
    left, top, right, bottom = PLOT
    height = PLOT_H + top + bottom
    x_max = max(c for _, c, _, _ in points) * 1.15 or 1.0
    y_min = max(0.0, math.floor(min(s for _, _, s, _ in points) * 10 - 0.5) / 10)
    y_span = (1.0 - y_min) or 1.0
    inner_w = WIDTH - left - right

    def px(cost: float) -> float:
        return left + cost / x_max * inner_w

    def py(score: float) -> float:
        return top + (1.0 - score) / y_span * PLOT_H

    measure = comparison.measure
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" role="img" data-chart="scatter" '
        f'aria-label="{_e(measure)} against cost per 1,000 rows">'
    ]
    step = 0.1 if y_span <= 0.5 + 1e-9 else 0.2
    for k in range(round(y_span / step) + 1):
        score = y_min + step * k
        y = py(score)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - right}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{left - 6}" y="{y:.1f}" class="tick-y">'
                     f"{score:.0%}</text>")  # fmt: skip
    for k in range(3):
        cost = x_max * k / 2
        parts.append(f'<text x="{px(cost):.1f}" y="{top + PLOT_H + 14}" class="tick-x">'
                     f"{_e(format_value('usd', cost))}</text>")  # fmt: skip
    parts.append(
        f'<line x1="{left}" y1="{top + PLOT_H}" x2="{WIDTH - right}" y2="{top + PLOT_H}" '
        f'class="axis"/><line x1="{left}" y1="{top}" x2="{left}" y2="{top + PLOT_H}" '
        f'class="axis"/><text x="{left + inner_w / 2:.1f}" y="{height - 18}" class="tick-x">'
        "USD per 1,000 rows</text>"
    )
    for j, (variant, cost, score, picked) in enumerate(points):
        x, y = px(cost), py(score)
        colour = PICK if picked else PALETTE[j % len(PALETTE)]
        tip = f"{variant}: {measure} {_pct(score)}, {format_value('usd', cost)} per 1,000 rows"
        tip += " (recommended)" if picked else ""
        ring = f'<circle cx="{x:.2f}" cy="{y:.2f}" r="11" class="ring"/>' if picked else ""
        anchor = "end" if x > left + inner_w * 0.6 else "start"
        dx = -14 if anchor == "end" else 14
        name = f"★ {variant}" if picked else variant
        parts.append(
            f'<g class="point{" recommended" if picked else ""}" data-variant="{_e(variant)}" '
            f'data-cost="{cost!r}" data-score="{score!r}"><title>{_e(tip)}</title>{ring}'
            f'<circle cx="{x:.2f}" cy="{y:.2f}" r="6" fill="{colour}"/>'
            f'<text x="{x + dx:.2f}" y="{y:.2f}" text-anchor="{anchor}" class="pt">'
            f"{_e(_short(name, 24))}</text></g>"
        )
    parts.append("</svg>")
    note += (
        f'<p class="note">{_e(measure.capitalize())}: the mean over the compared columns. '
        "★ the recommended variant.</p>"
    )
    return "".join(parts) + note


# ------------------------------------------------------------------- the heatmaps


def _heatmap_section(result: VariantScore, measure: str) -> str:
    heading = f"{result.variant} / {result.column}: confusion matrix"
    score = f"{measure} {_pct(result.score)}"
    return (
        f'<section class="card heatmap" data-variant="{_e(result.variant)}" '
        f'data-column="{_e(result.column)}"><h2>{_e(heading)}</h2>'
        f'<p class="note">{_e(score)}; rows: truth, columns: predicted.</p>'
        f"{_heatmap(result)}{_per_class(result)}</section>"
    )


def _heatmap(result: VariantScore) -> str:
    labels = result.scores.labels
    matrix = result.scores.matrix[:-1]  # the last row, no valid label as truth, is never filled
    truths = labels[: len(matrix)]
    cell = min(MAX_CELL, (WIDTH - SIDE_W) / max(len(labels), 1))
    width = SIDE_W + cell * len(labels)
    height = TOP_H + cell * len(truths)
    most = max((n for row in matrix for n in row), default=0) or 1
    size = min(14.0, cell * 0.4)
    parts = [
        f'<svg viewBox="0 0 {width:.1f} {height:.1f}" width="{width:.1f}" role="img" '
        f'data-chart="confusion" aria-label="{_e(result.variant)} / {_e(result.column)}">'
    ]
    for i, label in enumerate(labels):
        x = SIDE_W + cell * (i + 0.5)
        parts.append(
            f'<text transform="translate({x:.1f},{TOP_H - 6}) rotate(-90)" class="predicted">'
            f"<title>predicted: {_e(label)}</title>{_e(_short(label, TOP_CHARS))}</text>"
        )
    for t, (truth, row) in enumerate(zip(truths, matrix, strict=True)):
        y = TOP_H + cell * t
        parts.append(
            f'<text x="{SIDE_W - 6}" y="{y + cell / 2:.1f}" class="truth">'
            f"<title>truth: {_e(truth)}</title>{_e(_short(truth, SIDE_CHARS))}</text>"
        )
        for p, (predicted, count) in enumerate(zip(labels, row, strict=True)):
            x = SIDE_W + cell * p
            share = count / most
            dark = share > 0.55
            tip = f"truth {truth}, predicted {predicted}: {count:,} rows"
            parts.append(
                f'<g class="cell" data-truth="{_e(truth)}" data-predicted="{_e(predicted)}" '
                f'data-count="{count}"><title>{_e(tip)}</title>'
                f'<rect x="{x:.2f}" y="{y:.2f}" width="{cell:.2f}" height="{cell:.2f}" '
                f'fill="{_shade(share)}"/><text x="{x + cell / 2:.2f}" y="{y + cell / 2:.2f}" '
                f'class="count{" dark" if dark else ""}" style="font-size:{size:.1f}px">'
                f"{count:,}</text></g>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _shade(share: float) -> str:
    """White (none) to the palette's blue (the most), through its tints."""
    blue = (0x00, 0x72, 0xB2)
    mixed = (round(255 + (c - 255) * share) for c in blue)
    return "#" + "".join(f"{c:02x}" for c in mixed)


def _per_class(result: VariantScore) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "f1", "support"))
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td class=num>{m['precision']:.4f}</td>"
        f"<td class=num>{m['recall']:.4f}</td><td class=num>{m['f1']:.4f}</td>"
        f"<td class=num>{m['support']:,}</td></tr>"
        for label, m in result.scores.per_class.items()
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f'<div class="scroll per-class">{table}</div>'


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_CSS = """
.pick{margin:8px 0;padding:8px 12px;background:#fff;border-left:4px solid #D55E00;
border-radius:4px;font-weight:600}
tr.recommended td{background:#fdf0e6;font-weight:600}
svg .tick-y{text-anchor:end;font-size:12px;fill:#444}
svg .tick-x{text-anchor:middle;font-size:12px;fill:#444;dominant-baseline:hanging}
svg .pt{font-size:13px}svg .ring{fill:none;stroke:#D55E00;stroke-width:2}
svg .truth{text-anchor:end;font-size:13px}svg .predicted{text-anchor:start;font-size:13px}
svg .count{text-anchor:middle}svg .count.dark{fill:#fff}
svg .cell rect{stroke:#fff;stroke-width:1}
.per-class{margin-top:8px}
main>.charts{margin-top:12px}
"""
