"""`batchrun report --format html` in a real headless Chromium (Debian's package), offline.

One page is built by the real CLI from real Parquet files, loaded once over the
DevTools protocol with the network off; each test checks one thing about it:
no console errors, every chart drawn, every chart's numbers equal to
``--format json`` for the same files, what the page says it covers. A second page
over 20 days checks the time axis. Screenshots at laptop and phone width land in
a temporary directory (printed with ``-s``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from test_report import output_table, write

from batchrun.report.page import format_value
from batchrun.report.text import MISSING_LABELS

# Skipped on a machine without chromium, but never in CI, where .ci/run installs it.
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium; .ci/run does)",
)

DAYS = ("2026-11-23", "2026-11-24", "2026-11-25")
PRICING = """
[pricing."glm-5.2"]
input = 0.6
output = 2.2

[pricing."*"]
input = 1.0
output = 4.0

[pricing."gpt-55"]
input = 2.0
output = 9.0
"""
# What a run writes into its output's metadata: the job's name and its own prices.
METADATA = {
    "batchrun.job": "nightly-reviews",
    "batchrun.pricing": json.dumps({"gpt-5.5": {"input": 1.25, "output": 10.0}}),
}

SERIES_1K = (("recorded", "cost_per_1k_answered"), ("re-priced", "repriced_per_1k_answered"))
COLLECT = """JSON.stringify([...document.querySelectorAll('section.card[id]')].map(s => {
  const svg = s.querySelector('svg'); const box = svg.getBoundingClientRect();
  return {id: s.id, width: box.width, height: box.height,
    bars: [...svg.querySelectorAll('rect')].map(b => ({cat: b.dataset.category,
      series: b.dataset.series, value: parseFloat(b.dataset.value),
      width: b.getBoundingClientRect().width, height: b.getBoundingClientRect().height,
      x: b.getBoundingClientRect().x,
      tip: b.querySelector('title').textContent})),
    cats: [...svg.querySelectorAll('text.cat[data-label]')].map(t => ({label: t.dataset.label,
      lines: [...t.querySelectorAll('tspan')].map(l => l.textContent),
      left: t.getBBox().x, tip: t.querySelector('title').textContent})),
    months: [...svg.querySelectorAll('text.month')].map(t => t.textContent),
    labels: [...svg.querySelectorAll('text.val')].map(t => ({cat: t.dataset.category,
      series: t.dataset.series, text: t.textContent}))};
}))"""
TABLE = """JSON.stringify([...document.querySelectorAll('table tr')].map(
  r => [...r.children].map(c => c.textContent)))"""


def day_table(seed: int) -> pa.Table:
    """An output like a batchrun run's: several error types, some shared rows."""
    table = output_table(1500, seed)
    rng = np.random.default_rng(seed + 1000)  # not output_table's stream
    status = table["status"].to_numpy(zero_copy_only=False)
    kinds = rng.choice(["server_error", "timeout", "rate_limit"], table.num_rows)
    error_type = pa.array([k if s == "error" else None for k, s in zip(kinds, status, strict=True)])
    shared = (status == "ok") & (rng.random(table.num_rows) < 0.1)
    table = table.set_column(table.schema.get_field_index("error_type"), "error_type", error_type)
    return table.append_column("shared", pa.array(shared))


ABOUT = "document.querySelector('.about').innerText"


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "report", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from cdp import Browser

    browser = Browser()
    try:
        browser.offline()
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def page(browser: Any) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="batchrun-report-html-"))
    for seed, day in enumerate(DAYS, start=1):
        write(work / "out" / f"date={day}" / "part.parquet", day_table(seed), METADATA)
    (work / "what-if.toml").write_text(PRICING)
    common = [str(work / "out"), "--pricing", str(work / "what-if.toml")]
    before = datetime.now(UTC).replace(microsecond=0)
    # By date and model: labels longer than their place.
    cli(*common, "--by", "date,model", "--output", str(work / "report.html"))
    after = datetime.now(UTC)

    def as_json(by: str) -> list[dict[str, Any]]:
        document = json.loads(cli(*common, "--format", "json", "--by", by))
        return [*document["groups"], document["total"]]

    browser.load(work / "report.html")
    browser.viewport(1366, 768, mobile=False)
    charts = {c["id"]: c for c in json.loads(browser.evaluate(COLLECT))}
    laptop = browser.screenshot(work / "laptop-1366.png")
    browser.viewport(390, 844, mobile=True, scale=2)
    phone_width = browser.evaluate("document.documentElement.scrollWidth")
    phone = browser.screenshot(work / "phone-390.png")
    print(f"\nscreenshots: {laptop} {phone}")
    return {
        "charts": charts,
        "errors": browser.errors(),
        "requests": browser.requests(),
        "table": json.loads(browser.evaluate(TABLE)),
        "about": browser.evaluate(ABOUT),
        "made": (before, after),
        "phone_width": phone_width,
        "shots": (laptop, phone),
        "json": as_json,
        "text": cli(*common, "--by", "date,model", "--format", "table"),
        "html": (work / "report.html").read_text(),
    }


def bars(chart: dict[str, Any]) -> dict[tuple[str, str], float]:
    return {(b["cat"], b["series"]): b["value"] for b in chart["bars"]}


def labels(chart: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(t["cat"], t["series"]): t["text"] for t in chart["labels"]}


def groups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return records[:-1]  # all but TOTAL


def assert_bars_equal(chart: dict[str, Any], expected: dict[tuple[str, str], float]) -> None:
    got = bars(chart)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_the_page_loads_offline_with_no_console_errors_and_fetches_nothing(
    page: dict[str, Any],
) -> None:
    assert page["errors"] == []
    assert all(url.startswith("file://") for url in page["requests"])
    assert "<script" not in page["html"] and "http://" not in page["html"]
    assert "https://" not in page["html"]


def test_every_chart_has_rendered_bars_with_a_size(page: dict[str, Any]) -> None:
    charts = page["charts"]
    assert set(charts) == {
        "cost-per-day",
        "repriced-per-day",
        "tokens",
        "status",
        "errors",
        "latency",
        "cost-per-1k",
    }
    for chart in charts.values():
        assert chart["width"] > 200 and chart["height"] > 20, chart["id"]
        assert chart["bars"] and any(b["width"] > 1 for b in chart["bars"]), chart["id"]
        assert all(b["tip"] for b in chart["bars"]), chart["id"]


@pytest.mark.parametrize(
    ("chart", "column"), [("cost-per-day", "cost_usd"), ("repriced-per-day", "repriced_usd")]
)
def test_cost_per_day_by_model_equals_json_by_day_and_model(
    page: dict[str, Any], chart: str, column: str
) -> None:
    records = groups(page["json"]("day,model"))
    expected = {(r["day"], r["model"]): r[column] for r in records if r[column] is not None}
    assert {day for day, _ in expected} == set(DAYS)
    assert_bars_equal(page["charts"][chart], expected)
    shown = labels(page["charts"][chart])
    for day in DAYS:
        day_total = sum(v for (d, _), v in expected.items() if d == day)
        assert shown[(day, "total")] == format_value("usd", day_total)


def test_tokens_by_kind_equal_the_json_total(page: dict[str, Any]) -> None:
    total = page["json"]("model")[-1]
    expected = {
        ("uncached prompt", "tokens"): total["prompt_tokens"] - total["cached_tokens"],
        ("cached prompt", "tokens"): total["cached_tokens"],
        ("completion text", "tokens"): total["completion_tokens"] - total["reasoning_tokens"],
        ("reasoning", "tokens"): total["reasoning_tokens"],
    }
    assert_bars_equal(page["charts"]["tokens"], expected)
    assert labels(page["charts"]["tokens"]) == {
        k: format_value("count", v) for k, v in expected.items()
    }


def test_rows_by_status_and_by_error_type_equal_json(page: dict[str, Any]) -> None:
    total = page["json"]("status")[-1]
    names = ("ok", "error", "invalid", "pending", "shared")
    assert total["shared"] > 0
    assert_bars_equal(page["charts"]["status"], {(s, "rows"): total[s] for s in names})
    by_type = groups(page["json"]("error_type"))
    named = [r for r in by_type if r["error_type"] not in MISSING_LABELS]
    expected = {(r["error_type"], "rows"): r["rows"] for r in named}
    assert len(expected) == 3
    assert_bars_equal(page["charts"]["errors"], expected)
    assert labels(page["charts"]["errors"]) == {
        k: format_value("count", v) for k, v in expected.items()
    }


def test_latency_by_model_equals_json_by_model(page: dict[str, Any]) -> None:
    records = [r for r in groups(page["json"]("model")) if r["latency_p50_ms"] is not None]
    expected = {}
    for r in records:
        expected[(r["model"], "p50")] = r["latency_p50_ms"]
        expected[(r["model"], "p95")] = r["latency_p95_ms"]
    assert_bars_equal(page["charts"]["latency"], expected)
    assert labels(page["charts"]["latency"]) == {
        k: format_value("ms", v) for k, v in expected.items()
    }


def test_cost_per_1k_rows_by_group_equals_json_recorded_and_repriced(
    page: dict[str, Any],
) -> None:
    expected = {}
    records = page["json"]("date,model")
    for r in records:
        name = " · ".join([r["date"], r["model"]] if r is not records[-1] else ["TOTAL"])
        for series, column in SERIES_1K:
            if r[column] is not None:
                expected[(name, series)] = r[column]
    assert ("TOTAL", "re-priced") in expected
    assert_bars_equal(page["charts"]["cost-per-1k"], expected)


def test_the_table_shows_the_same_cells_as_the_text_table(page: dict[str, Any]) -> None:
    header, _, *body = page["text"].splitlines()
    rows = [line.split("  ") for line in body if not set(line) <= {"-", " "}]
    text_cells = [[c.strip() for c in row if c.strip()] for row in rows]
    html_cells = [[c for c in row if c] for row in page["table"][1:]]
    assert html_cells == text_cells
    assert "".join(page["table"][0]).replace(" ", "") == header.replace(" ", "")


def test_phone_width_scrolls_only_the_table_and_screenshots_are_written(
    page: dict[str, Any],
) -> None:
    assert page["phone_width"] <= 390
    for shot in page["shots"]:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_the_page_is_small_enough_to_mail(page: dict[str, Any]) -> None:
    assert len(page["html"].encode()) < 100_000


def test_the_page_says_when_it_was_made_over_which_files_and_at_which_prices(
    page: dict[str, Any],
) -> None:
    about = page["about"]
    stamp = re.search(r"Generated\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", about)
    assert stamp, about
    made = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    before, after = page["made"]
    assert before <= made <= after
    assert re.search(r"Files\s+3 files from \S+/out\b", about), about
    assert all(f"date={day}/part.parquet" in about for day in DAYS)
    assert "nightly-reviews: gpt-5.5 $1.25 in, $10 out per 1M tokens" in about
    assert (
        "what-if.toml: * $1 in, $4 out per 1M tokens; glm-5.2 $0.6 in, $2.2 out per 1M tokens;"
        " gpt-55 $2 in, $9 out per 1M tokens"
    ) in about
    assert re.search(r"Prices for no model here\s+gpt-55", about), about
    assert re.search(r"No price\s+unpriced-model: [\d,]+ of [\d,]+ answered rows", about), about


def test_recorded_and_repriced_cost_per_day_share_one_scale(page: dict[str, Any]) -> None:
    charts = page["charts"]
    drawn = [b for c in ("cost-per-day", "repriced-per-day") for b in charts[c]["bars"]]
    px_per_usd = [b["width"] / b["value"] for b in drawn if b["width"] > 2]
    assert len(px_per_usd) >= 6
    assert max(px_per_usd) == pytest.approx(min(px_per_usd), rel=0.01)
    # The re-priced bars are shorter: the prices are lower, and the page shows it.
    widest = {
        c: max(b["width"] for b in charts[c]["bars"]) for c in ("cost-per-day", "repriced-per-day")
    }
    assert widest["repriced-per-day"] < widest["cost-per-day"] / 2


def test_no_label_is_cut_and_each_keeps_its_full_name_on_hover(page: dict[str, Any]) -> None:
    for chart in page["charts"].values():
        names = [c["label"] for c in chart["cats"]]
        assert len(set(names)) == len(names), chart["id"]
        for cat in chart["cats"]:
            shown = "".join(cat["lines"]).replace(" ", "")
            assert shown == cat["label"].replace(" · ", "").replace(" ", ""), cat
            assert cat["tip"] == cat["label"] and cat["left"] >= 0, cat
    long = [c for c in page["charts"]["cost-per-1k"]["cats"] if " · " in c["label"]]
    assert long and all(len(c["lines"]) == 2 for c in long)


def test_missing_groups_are_named_for_what_they_are(page: dict[str, Any]) -> None:
    keys = {tuple(row[:2]) for row in page["table"][1:-1]}
    assert (DAYS[0], "(unanswered)") in keys and (DAYS[0], "(invalid)") in keys
    assert "(null)" not in page["html"]


# ---------------------------------------------------------------- the time axis

LONG_FIRST, LONG_DAYS = date(2026, 11, 20), 20
LONG_GAP = date(2026, 11, 28)  # no run that night


@pytest.fixture(scope="module")
def timeline(browser: Any) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="batchrun-report-timeline-"))
    days = [LONG_FIRST + timedelta(n) for n in range(LONG_DAYS)]
    for seed, day in enumerate(d for d in days if d != LONG_GAP):
        write(work / "out" / f"date={day}" / "part.parquet", output_table(200 + 20 * seed, seed))
    (work / "what-if.toml").write_text(PRICING)
    page = work / "month.html"
    common = [str(work / "out"), "--pricing", str(work / "what-if.toml")]
    cli(*common, "--output", str(page))
    browser.load(page)
    browser.viewport(1366, 768, mobile=False)
    charts = {c["id"]: c for c in json.loads(browser.evaluate(COLLECT))}
    print(f"\nscreenshot: {browser.screenshot(work / 'month-1366.png')}")
    browser.viewport(390, 844, mobile=True, scale=2)
    phone_width = browser.evaluate("document.documentElement.scrollWidth")
    by_day = json.loads(cli(*common, "--by", "day,model", "--format", "json"))["groups"]
    return {
        "charts": charts,
        "days": days,
        "html": page.read_text(),
        "phone_width": phone_width,
        "json": by_day,
    }


def test_over_more_than_14_days_cost_per_day_is_a_column_per_day_on_a_time_axis(
    timeline: dict[str, Any],
) -> None:
    chart = timeline["charts"]["cost-per-day"]
    assert chart["months"] == ["Nov 2026", "Dec"]
    lefts = {date.fromisoformat(b["cat"]): b["x"] for b in chart["bars"]}
    assert set(lefts) == set(timeline["days"]) - {LONG_GAP}
    step = (lefts[max(lefts)] - lefts[LONG_FIRST]) / (LONG_DAYS - 1)
    assert step > 5
    for day, x in lefts.items():  # each day in its own place, the gap included
        assert x - lefts[LONG_FIRST] == pytest.approx((day - LONG_FIRST).days * step, abs=0.5)
    assert "<script" not in timeline["html"] and "http" not in timeline["html"]


def test_the_time_axes_share_one_scale(timeline: dict[str, Any]) -> None:
    charts = timeline["charts"]
    drawn = [b for c in ("cost-per-day", "repriced-per-day") for b in charts[c]["bars"]]
    px_per_usd = [b["height"] / b["value"] for b in drawn if b["height"] > 2]
    assert len(px_per_usd) > LONG_DAYS
    assert max(px_per_usd) == pytest.approx(min(px_per_usd), rel=0.02)


@pytest.mark.parametrize(
    ("chart", "column"), [("cost-per-day", "cost_usd"), ("repriced-per-day", "repriced_usd")]
)
def test_the_time_axis_bars_equal_json_by_day_and_model(
    timeline: dict[str, Any], chart: str, column: str
) -> None:
    expected = {
        (r["day"], r["model"]): r[column] for r in timeline["json"] if r[column] is not None
    }
    assert_bars_equal(timeline["charts"][chart], expected)
    assert timeline["phone_width"] <= 390
