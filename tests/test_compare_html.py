"""`batchrun compare --format html` in a real headless Chromium (Debian's package), offline.

The page is built by the real CLI from the real outputs of three emulated runs (the
``outputs`` fixture of test_compare), loaded once with the network off; each test checks
one thing: nothing fetched and no errors, the table's figures equal ``--format json``'s,
one heatmap cell per (truth, predicted) pair holding the matrix's count, one scatter
point per variant, no horizontal scroll of the page on a phone. Screenshots at laptop
and phone width land in a temporary directory (printed with ``-s``).
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

import pytest
from test_compare import outputs  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium; .ci/run does)",
)

COLLECT = """JSON.stringify({
  rows: [...document.querySelectorAll('#variants tbody tr')].map(r => ({
    variant: r.dataset.variant, column: r.dataset.column, marked: r.className,
    text: [...r.children].map(c => c.textContent),
    values: Object.fromEntries([...r.querySelectorAll('td[data-key]')].map(
      c => [c.dataset.key, c.dataset.value]))})),
  heatmaps: [...document.querySelectorAll('section.heatmap')].map(s => ({
    variant: s.dataset.variant, column: s.dataset.column,
    cells: [...s.querySelectorAll('g.cell')].map(g => ({truth: g.dataset.truth,
      predicted: g.dataset.predicted, count: parseInt(g.dataset.count),
      text: g.querySelector('text').textContent,
      width: g.querySelector('rect').getBoundingClientRect().width})),
    axes: [...s.querySelectorAll('text.truth, text.predicted')].map(
      t => t.querySelector('title').textContent)})),
  points: [...document.querySelectorAll('g.point')].map(g => ({variant: g.dataset.variant,
    cost: parseFloat(g.dataset.cost), score: parseFloat(g.dataset.score),
    recommended: g.classList.contains('recommended'),
    label: g.querySelector('text').textContent,
    width: g.querySelector('circle').getBoundingClientRect().width}))})"""


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "compare", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def page(outputs: dict[str, Path]) -> Iterator[dict[str, Any]]:  # noqa: F811
    from cdp import Browser

    work = Path(tempfile.mkdtemp(prefix="batchrun-compare-html-"))
    common = [*(str(p) for p in outputs.values()), "--gold", "gold", "--columns", "sentiment"]
    cli(*common, "--output", str(work / "compare.html"))  # html from the extension
    records = json.loads(cli(*common, "--format", "json"))
    browser = Browser()
    try:
        browser.offline()
        browser.load(work / "compare.html")
        browser.viewport(1366, 768, mobile=False)
        found = json.loads(browser.evaluate(COLLECT))
        laptop = browser.screenshot(work / "laptop-1366.png")
        browser.viewport(390, 844, mobile=True, scale=2)
        phone_width = browser.evaluate("document.documentElement.scrollWidth")
        phone = browser.screenshot(work / "phone-390.png")
        print(f"\nscreenshots: {laptop} {phone}")
        yield {
            **found,
            "json": records,
            "errors": browser.errors(),
            "requests": browser.requests(),
            "phone_width": phone_width,
            "shots": (laptop, phone),
            "html": (work / "compare.html").read_text(),
        }
    finally:
        browser.close()


def test_the_page_loads_offline_with_no_errors_and_fetches_nothing(page: dict[str, Any]) -> None:
    assert page["errors"] == []
    assert [url for url in page["requests"] if not url.startswith("file:")] == []
    assert "<script" not in page["html"].lower()


def test_the_table_carries_each_variants_json_figures(page: dict[str, Any]) -> None:
    assert [(r["variant"], r["column"]) for r in page["rows"]] == [
        (r["variant"], r["column"]) for r in page["json"]
    ]
    for row, record in zip(page["rows"], page["json"], strict=True):
        for key, value in row["values"].items():
            assert value == repr(record[key]), (row["variant"], key)
        text = row["text"]
        assert text[2:8] == [
            f"{record['rows']:,}",
            f"{record['valid']:,}",
            f"{record['accuracy']:.2%}",
            f"{record['kappa']:.4f}",
            f"{record['cost_usd']:,.4f}",
            f"{record['cost_per_1k_rows']:,.4f}",
        ]
        assert ("recommended" in row["marked"]) == record["recommended"]
        assert ("recommended" in text[8]) == record["recommended"]
    assert sum(r["recommended"] for r in page["json"]) == 1


def test_each_heatmap_has_one_cell_per_pair_holding_the_matrix_count(
    page: dict[str, Any],
) -> None:
    assert len(page["heatmaps"]) == len(page["json"])
    for heatmap, record in zip(page["heatmaps"], page["json"], strict=True):
        assert (heatmap["variant"], heatmap["column"]) == (record["variant"], record["column"])
        labels = record["confusion_matrix"]["labels"]
        matrix = record["confusion_matrix"]["matrix"]
        expected = {
            (truth, predicted): matrix[t][p]
            for t, truth in enumerate(labels[:-1])  # no truth is "no valid label"
            for p, predicted in enumerate(labels)
        }
        cells = {(c["truth"], c["predicted"]): c for c in heatmap["cells"]}
        assert len(cells) == len(heatmap["cells"]) == len(expected)
        assert {k: c["count"] for k, c in cells.items()} == expected
        assert all(c["text"] == f"{c['count']:,}" and c["width"] > 10 for c in cells.values())
        # Class names on both axes, in full on hover.
        assert {f"truth: {t}" for t in labels[:-1]} | {f"predicted: {p}" for p in labels} == set(
            heatmap["axes"]
        )


def test_the_scatter_has_one_labelled_point_per_variant_the_pick_marked(
    page: dict[str, Any],
) -> None:
    variants = list(dict.fromkeys(r["variant"] for r in page["json"]))
    points = {p["variant"]: p for p in page["points"]}
    assert len(page["points"]) == len(variants) and set(points) == set(variants)
    for record in page["json"]:
        point = points[record["variant"]]
        assert point["cost"] == pytest.approx(record["cost_per_1k_rows"], rel=1e-12)
        assert point["score"] == pytest.approx(record["accuracy"], rel=1e-12)  # one column
        assert point["recommended"] == record["recommended"]
        assert record["variant"] in point["label"] and point["width"] > 0


def test_phone_width_has_no_horizontal_scroll_and_screenshots_are_written(
    page: dict[str, Any],
) -> None:
    assert page["phone_width"] <= 390
    for shot in page["shots"]:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_names_are_escaped(outputs: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(outputs["glm-5.2"])
    column = table.column("sentiment").to_pylist()
    evil = '<img src=x onerror="alert(1)">'
    table = table.set_column(
        table.schema.get_field_index("sentiment"),
        "sentiment",
        pa.array([evil if v == "neutral" else v for v in column]),
    )
    odd = tmp_path / "a<b>&c.parquet"
    pq.write_table(table, odd)
    text = cli(
        str(outputs["gpt-5.5"]),
        str(odd),
        "--gold",
        "gold",
        "--columns",
        "sentiment",
        "--format",
        "html",
    )
    assert "<img" not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "a&lt;b&gt;&amp;c" in text


def test_format_follows_the_output_extension_and_a_clash_exits_2(
    outputs: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    common = [
        str(outputs["gpt-5.5"]),
        str(outputs["glm-5.2"]),
        "--gold",
        "gold",
        "--columns",
        "sentiment",
    ]
    cli(*common, "--output", str(tmp_path / "c.json"))
    assert json.loads((tmp_path / "c.json").read_text())[0]["variant"] == "gpt-5.5"
    cli(*common, "--output", str(tmp_path / "c.md"))
    assert (tmp_path / "c.md").read_text().startswith("| variant |")
    clash = ["--format", "json", "--output", str(tmp_path / "c.html")]
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "compare", *common, *clash],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "--format json does not match --output" in done.stderr
    assert not (tmp_path / "c.html").exists()
    reference = [str(outputs["gpt-5.5"]), str(outputs["glm-5.2"]), "--reference", "gpt-5.5"]
    cli(*reference, "--columns", "sentiment", "--output", str(tmp_path / "r.html"))
    assert "Agreement against cost per 1,000 rows" in (tmp_path / "r.html").read_text()
