"""``compare``: every variant's labels against a gold column or a reference variant, its
cost, and the cheapest variant within ``within`` points of the best.

    compare(paths, gold=..., reference=..., columns=..., within=2.0, disagreements=...)
      open_outputs      one job's outputs, their layout             [compare.source]
      variant_names     the variants, in the order first seen
      _columns          the compared columns, checked
      aligned chunks    per chunk: codes per variant and column -> Tally, rows, cost
      _recommend        best score; cheapest variant within the margin
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchrun._errors import JobError
from batchrun.compare.disagree import DisagreementWriter
from batchrun.compare.metrics import Codes, Scores, Tally, Vocab, scores
from batchrun.compare.source import Layout, aligned, open_outputs, variant_names

_LABEL_TYPES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_integer,
    pa.types.is_boolean,
)


@dataclass(frozen=True)
class VariantScore:
    """One variant's labels for one column: what ``compare`` prints, one per line."""

    variant: str
    column: str
    rows: int
    valid: int
    measure: str  # "accuracy" (against gold) or "agreement" (with the reference)
    scores: Scores
    cost_usd: float | None
    recommended: bool = False

    @property
    def score(self) -> float | None:
        return self.scores.accuracy

    @property
    def cost_per_1k_rows(self) -> float | None:
        if self.cost_usd is None or not self.rows:
            return None
        return self.cost_usd / self.rows * 1000

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this variant and column (exactly these keys)."""
        return {
            "variant": self.variant,
            "column": self.column,
            "rows": self.rows,
            "valid": self.valid,
            self.measure: self.scores.accuracy,
            "kappa": self.scores.kappa,
            "per_class": self.scores.per_class,
            "confusion_matrix": {"labels": self.scores.labels, "matrix": self.scores.matrix},
            "cost_usd": self.cost_usd,
            "cost_per_1k_rows": self.cost_per_1k_rows,
            "recommended": self.recommended,
        }


@dataclass(frozen=True)
class Comparison:
    results: list[VariantScore]
    measure: str
    within: float
    recommended: str | None
    best: str | None
    disagreements: int | None = None

    def to_list(self) -> list[dict[str, Any]]:
        return [result.to_dict() for result in self.results]


@dataclass
class _Counts:
    rows: int = 0
    cost: float = 0.0
    priced: bool = False
    valid: dict[str, int] = field(default_factory=dict)


def compare(
    paths: Sequence[str],
    *,
    gold: str | None = None,
    reference: str | None = None,
    columns: Sequence[str] | None = None,
    within: float = 2.0,
    disagreements: str | None = None,
) -> Comparison:
    """Compare the variants in ``paths`` (outputs of one job) column by column.

    Exactly one of ``gold`` (a column holding the right labels) and ``reference`` (a
    variant whose labels the others are held to) is given. Raises ``JobError`` (exit 2)
    for anything that does not fit: another job's output, an unknown column or variant.
    """
    if (gold is None) == (reference is None):
        raise JobError("compare needs exactly one of --gold COLUMN and --reference VARIANT")
    if not within >= 0:
        raise JobError(f"--within: {within} must be 0 or more (points of accuracy)")
    outputs = open_outputs(paths)
    layout = outputs[0].layout
    variants = variant_names(outputs)
    if reference is not None and reference not in variants:
        raise JobError(f"--reference: no variant {reference!r} (variants: {', '.join(variants)})")
    if gold is not None and gold not in layout.schema.names:
        shown = ", ".join([*layout.inputs, *layout.parsed])
        raise JobError(f"--gold: column {gold!r} is not in the output (columns: {shown})")
    compared = _columns(layout, columns, gold)
    writer = (
        DisagreementWriter(disagreements, layout, gold, compared, variants)
        if disagreements
        else None
    )
    status, cost = layout.own("status"), layout.own("cost_usd")
    read = [status, cost, *compared, *([gold] if gold else [])]
    if writer is not None:
        read += [name for name in layout.inputs if name not in read]
    vocabs = {column: Vocab() for column in compared}
    tallies = {(v, c): Tally() for v in variants for c in compared}
    counts = {v: _Counts() for v in variants}
    try:
        for chunk in aligned(outputs, read, variants):
            codes = {v: _codes(chunk[v], status, compared, vocabs) for v in variants}
            golds = (
                {c: vocabs[c].codes(chunk[variants[0]].column(gold)) for c in compared}
                if gold
                else {}
            )
            for v in variants:
                _count(counts[v], chunk[v], cost, codes[v])
                for c in compared:
                    truth = golds[c] if gold else codes[reference][c]  # type: ignore[index]
                    tallies[v, c].add(truth, codes[v][c], len(vocabs[c].labels))
            if writer is not None:
                writer.add(chunk, codes, golds)
    finally:
        if writer is not None:
            writer.close()
    measure = "accuracy" if gold else "agreement"
    results = [
        VariantScore(
            v,
            c,
            counts[v].rows,
            counts[v].valid.get(c, 0),
            measure,
            scores(tallies[v, c], vocabs[c]),
            counts[v].cost if counts[v].priced else None,
        )
        for v in variants
        for c in compared
    ]
    return _recommend(results, measure, within, None if writer is None else writer.rows)


def _columns(layout: Layout, asked: Sequence[str] | None, gold: str | None) -> list[str]:
    types = {name: layout.schema.field(name).type for name in layout.parsed}
    if asked:
        for name in asked:
            if name not in types:
                shown = ", ".join(layout.parsed) or "none"
                raise JobError(f"--columns: {name!r} is not a parsed column (parsed: {shown})")
            if not any(check(types[name]) for check in _LABEL_TYPES):
                raise JobError(
                    f"--columns: {name!r} is {types[name]}; compare takes string, "
                    "integer or boolean label columns"
                )
        return list(dict.fromkeys(asked))
    found = [n for n, t in types.items() if n != gold and any(c(t) for c in _LABEL_TYPES)]
    if not found:
        raise JobError(
            "no label column to compare: the output has no string, integer or boolean parsed column"
        )
    if gold is not None and len(found) > 1:
        raise JobError(
            f"--gold {gold}: say which column it grades with --columns (one of {', '.join(found)})"
        )
    return found


def _codes(
    table: pa.Table, status: str, columns: Sequence[str], vocabs: Mapping[str, Vocab]
) -> dict[str, Codes]:
    """Each column's label codes; -1 where the row has no valid answer."""
    is_ok: Any = pc.fill_null(pc.equal(table.column(status), pa.scalar("ok")), pa.scalar(False))
    ok = is_ok.to_numpy()
    out = {}
    for column in columns:
        codes = vocabs[column].codes(table.column(column))
        out[column] = np.where(ok, codes, -1)
    return out


def _count(counts: _Counts, table: pa.Table, cost: str, codes: Mapping[str, Codes]) -> None:
    counts.rows += table.num_rows
    costs = table.column(cost)
    if costs.null_count < table.num_rows:
        counts.priced = True
        counts.cost += pc.sum(costs).as_py() or 0.0
    for column, values in codes.items():
        counts.valid[column] = counts.valid.get(column, 0) + int((values >= 0).sum())


def _recommend(
    results: list[VariantScore], measure: str, within: float, disagreements: int | None
) -> Comparison:
    """The mean score over columns per variant; the cheapest within ``within`` points of
    the best (unpriced variants only when none is priced); ties go to the higher score."""
    by_variant: dict[str, list[VariantScore]] = {}
    for result in results:
        by_variant.setdefault(result.variant, []).append(result)
    means = {v: _mean([r.score for r in rs]) for v, rs in by_variant.items()}
    scored = {v: m for v, m in means.items() if m is not None}
    if not scored:
        return Comparison(results, measure, within, None, None, disagreements)
    best = max(scored, key=lambda v: scored[v])
    close = [v for v, m in scored.items() if m >= scored[best] - within / 100 - 1e-12]
    cost = {v: by_variant[v][0].cost_per_1k_rows for v in close}
    priced = [v for v in close if cost[v] is not None]
    pick = min(priced, key=lambda v: (cost[v], -scored[v])) if priced else best
    marked = [VariantScore(**{**r.__dict__, "recommended": r.variant == pick}) for r in results]
    return Comparison(marked, measure, within, pick, best, disagreements)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return sum(known) / len(known) if known else None
