"""What a report page says about itself: when it was made, over which files, at which
prices, and which models had none. The page's header shows it as an "About" card."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping

from batchrun.job.config import Price
from batchrun.report.aggregate import ReportResult
from batchrun.report.text import MISSING_LABELS

__all__ = ["about", "unpriced_models"]

_LISTED = 12  # more files than this: the list folds away under its count


def about(result: ReportResult, pricing_name: str | None = None) -> str:
    """The "About this report" card: a ``<dl>`` of generation time, files and prices."""
    facts = [
        ("Generated", _e(f"{result.generated_at:%Y-%m-%d %H:%M:%S} UTC")),
        ("Files", _files(result)),
        ("Recorded prices", _recorded(result.job_pricing)),
    ]
    if result.pricing is not None:
        name = _e(pricing_name or "--pricing")
        facts.append(("Re-priced at", f"{name}: {_prices(result.pricing)}"))
    missing = unpriced_models(result)
    unmatched = result.unmatched_prices()
    if missing:
        facts.append(("No price", _list(f"{m}: {why}" for m, why in missing.items())))
    if unmatched:
        facts.append(("Prices for no model here", _list(unmatched)))
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts)
    return f'<section class="card wide about"><h2>About this report</h2><dl>{items}</dl></section>'


def unpriced_models(result: ReportResult) -> dict[str, str]:
    """Models with answered rows but no price (recorded, or in ``--pricing``), and why."""
    found: dict[str, str] = {}
    for row in result.table_by(["model"]).iloc[:-1].to_dict(orient="records"):
        model, ok, unpriced = str(row["model"]), int(row["ok"]), int(row["unpriced"])
        if model in MISSING_LABELS or not ok:
            continue
        reasons = []
        if unpriced:
            reasons.append(f"{unpriced:,} of {ok:,} answered rows have no recorded price")
        if result.pricing is not None and math.isnan(row["repriced_usd"]):
            reasons.append("not in the --pricing file")
        if reasons:
            found[model] = "; ".join(reasons)
    return found


def _files(result: ReportResult) -> str:
    count = len(result.files)
    given = ", ".join(result.paths)
    head = f"{count:,} file{'s' if count != 1 else ''}" + (f" from {given}" if given else "")
    listed = _list(result.files)
    if count <= _LISTED:
        return f"{_e(head)}{listed}"
    return f"<details><summary>{_e(head)}</summary>{listed}</details>"


def _recorded(jobs: Mapping[str, Mapping[str, Price]]) -> str:
    if not jobs:
        return "not recorded in the files (written before batchrun kept them)"
    return _list_html(f"{_e(job)}: {_prices(prices)}" for job, prices in sorted(jobs.items()))


def _prices(prices: Mapping[str, Price]) -> str:
    if not prices:
        return "none"
    return "; ".join(f"{_e(m)} {_e(_price(p))}" for m, p in sorted(prices.items()))


def _price(p: Price) -> str:
    cached = "" if p.cached_input is None else f", cached ${p.cached_input:g}"
    return f"${p.input:g} in{cached}, ${p.output:g} out per 1M tokens"


def _list(texts: Iterable[str]) -> str:
    return _list_html(_e(t) for t in texts)


def _list_html(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
