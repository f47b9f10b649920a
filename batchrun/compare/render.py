"""A ``Comparison`` as ``table`` (aligned text), ``markdown`` or ``json``.

``json`` is a list with one object per variant and column (``VariantScore.to_dict``);
the text formats show the summary, the recommendation, then per variant and column
the per-class figures and the confusion matrix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from batchrun._errors import JobError
from batchrun.compare.compute import Comparison, VariantScore

FORMATS = ("table", "json", "markdown")
Grid = Callable[[Sequence[str], Sequence[Sequence[str]], Sequence[bool]], list[str]]


def render(comparison: Comparison, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(comparison.to_list(), indent=2) + "\n"
    if fmt == "table":
        return _text(comparison, _aligned)
    if fmt == "markdown":
        return _text(comparison, _markdown)
    raise JobError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def recommendation(comparison: Comparison) -> str:
    """One line: the pick, its score and cost, and the best it is measured against."""
    pick = comparison.recommended
    if pick is None:
        return f"recommended: none (no variant has a {comparison.measure})"
    mine = next(r for r in comparison.results if r.variant == pick)
    best = next(r for r in comparison.results if r.variant == comparison.best)
    cost = "unpriced" if mine.cost_per_1k_rows is None else f"${mine.cost_per_1k_rows:,.4f}"
    text = f"recommended: {pick} ({comparison.measure} {_pct(_mean(comparison, pick))}, "
    text += f"{cost} per 1,000 rows)"
    if pick != best.variant:
        text += f", within {comparison.within:g} points of the best, {best.variant}"
        text += f" ({_pct(_mean(comparison, best.variant))})"
    else:
        text += f", the best; nothing cheaper within {comparison.within:g} points"
    return text


def _mean(comparison: Comparison, variant: str) -> float | None:
    values = [r.score for r in comparison.results if r.variant == variant and r.score is not None]
    return sum(values) / len(values) if values else None


def _text(comparison: Comparison, grid: Grid) -> str:
    header = ["variant", "column", "rows", "valid", comparison.measure, "kappa"]
    header += ["cost_usd", "usd/1k rows", ""]
    right = [False, False, True, True, True, True, True, True, False]
    rows = [summary_row(r) for r in comparison.results]
    lines = [*grid(header, rows, right), "", recommendation(comparison)]
    if comparison.disagreements is not None:
        lines.append(f"disagreements: {comparison.disagreements:,} rows written")
    for result in comparison.results:
        lines += ["", f"{result.variant} / {result.column}: per class", ""]
        lines += grid(*_per_class(result))
        lines += ["", f"{result.variant} / {result.column}: confusion matrix (rows: truth)", ""]
        lines += grid(*_confusion(result))
    return "\n".join(lines) + "\n"


def summary_row(r: VariantScore, pick: str = "recommended") -> list[str]:
    """One variant and column's cells; ``pick`` marks the recommended one."""
    return [
        r.variant,
        r.column,
        f"{r.rows:,}",
        f"{r.valid:,}",
        _pct(r.score),
        "n/a" if r.scores.kappa is None else f"{r.scores.kappa:.4f}",
        "n/a" if r.cost_usd is None else f"{r.cost_usd:,.4f}",
        "n/a" if r.cost_per_1k_rows is None else f"{r.cost_per_1k_rows:,.4f}",
        pick if r.recommended else "",
    ]


def _per_class(r: VariantScore) -> tuple[list[str], list[list[str]], list[bool]]:
    header = ["class", "precision", "recall", "f1", "support"]
    rows = [
        [
            label,
            f"{m['precision']:.4f}",
            f"{m['recall']:.4f}",
            f"{m['f1']:.4f}",
            f"{m['support']:,}",
        ]
        for label, m in r.scores.per_class.items()
    ]
    return header, rows, [False, True, True, True, True]


def _confusion(r: VariantScore) -> tuple[list[str], list[list[str]], list[bool]]:
    labels = r.scores.labels
    header = ["", *labels]
    rows = [
        [label, *(f"{n:,}" for n in row)]
        for label, row in zip(labels, r.scores.matrix, strict=True)
    ]
    return header, rows[:-1], [False, *([True] * len(labels))]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _aligned(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]
) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = zip(cells, widths, right, strict=True)
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in parts).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def _markdown(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]
) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    return [line(header), align, *map(line, rows)]
