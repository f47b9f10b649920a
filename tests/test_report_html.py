"""`batchrun report --format html` in a real headless Chromium (Debian's package), offline.

One page is built by the real CLI from real Parquet files, loaded once over the
DevTools protocol with the network off; each test checks one thing about it:
no console errors, every chart drawn, and every chart's numbers equal to
``--format json`` for the same files. Screenshots at laptop and phone width
land in a temporary directory (printed with ``-s``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from test_report import output_table, write

from batchrun.report.page import format_value

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
"""

SERIES_1K = (("recorded", "cost_per_1k_rows"), ("re-priced", "repriced_per_1k_rows"))
COLLECT = """JSON.stringify([...document.querySelectorAll('section.card[id]')].map(s => {
  const svg = s.querySelector('svg'); const box = svg.getBoundingClientRect();
  return {id: s.id, width: box.width, height: box.height,
    bars: [...svg.querySelectorAll('rect')].map(b => ({cat: b.dataset.category,
      series: b.dataset.series, value: parseFloat(b.dataset.value),
      width: b.getBoundingClientRect().width, tip: b.querySelector('title').textContent})),
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
def page() -> Iterator[dict[str, Any]]:
    from cdp import Browser

    work = Path(tempfile.mkdtemp(prefix="batchrun-report-html-"))
    for seed, day in enumerate(DAYS, start=1):
        write(work / "out" / f"date={day}" / "part.parquet", day_table(seed))
    (work / "what-if.toml").write_text(PRICING)
    common = [str(work / "out"), "--pricing", str(work / "what-if.toml")]
    cli(*common, "--format", "html", "--output", str(work / "report.html"))

    def as_json(by: str) -> list[dict[str, Any]]:
        return list(json.loads(cli(*common, "--format", "json", "--by", by)))

    browser = Browser()
    try:
        browser.offline()
        browser.load(work / "report.html")
        browser.viewport(1366, 768, mobile=False)
        charts = {c["id"]: c for c in json.loads(browser.evaluate(COLLECT))}
        laptop = browser.screenshot(work / "laptop-1366.png")
        browser.viewport(390, 844, mobile=True, scale=2)
        phone_width = browser.evaluate("document.documentElement.scrollWidth")
        phone = browser.screenshot(work / "phone-390.png")
        print(f"\nscreenshots: {laptop} {phone}")
        yield {
            "charts": charts,
            "errors": browser.errors(),
            "requests": browser.requests(),
            "table": json.loads(browser.evaluate(TABLE)),
            "phone_width": phone_width,
            "shots": (laptop, phone),
            "json": as_json,
            "text": cli(*common, "--format", "table"),
            "html": (work / "report.html").read_text(),
        }
    finally:
        browser.close()


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
    expected = {(r["error_type"], "rows"): r["rows"] for r in by_type if r["error_type"]}
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
    records = page["json"]("model,status")
    for r in records:
        keys = [r["model"], r["status"]] if r is not records[-1] else ["TOTAL"]
        name = " · ".join("(null)" if k is None else k for k in keys)
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
