"""``batchrun compare``: every figure equals scikit-learn's on the same labels, the
recommendation is the cheapest variant within N points of the best, bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_batchrun, write_job
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from batchrun.compare.compute import compare
from batchrun.compare.metrics import NO_LABEL
from batchrun.emulator.labels import true_label

SENTIMENTS = ["positive", "negative", "neutral"]
MODELS = {"gpt-5.5": 0.9, "glm-5.2": 0.8, "deepseek-v4.1": 0.6}
PRICES = {
    'pricing."gpt-5.5"': {"input": 1.25, "output": 10.0},
    'pricing."glm-5.2"': {"input": 0.2, "output": 1.0},
    'pricing."deepseek-v4.1"': {"input": 0.1, "output": 0.5},
}


def _rows(count: int) -> list[dict[str, str]]:
    rows = []
    for i in range(count):
        text = f"Review {i}: item {i * 7 % 13} was {('fine', 'late', 'great')[i % 3]}."
        rows.append({"id": f"r{i:04d}", "text": text})
    for row in rows:
        row["gold"] = true_label("Label: " + row["text"], SENTIMENTS)
    return rows


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, emulators: Any) -> dict[str, Path]:
    """One run per model over the same 300 rows, each into its own output file."""
    accuracy = [arg for model, a in MODELS.items() for arg in ("--label-accuracy", f"{model}={a}")]
    emu = emulators.get(*accuracy, "--label-break-rate", "0.05")
    tmp = tmp_path_factory.mktemp("compare")
    job = write_job(
        tmp,
        rows=_rows(300),
        request={"max_completion_tokens": 100, "response_format": "json_object"},
        output={
            "parse": "json",
            "columns": {"sentiment": {"type": "string", "enum": SENTIMENTS}, "note": "string"},
        },
        limits={"max_failed_rows": 300},
        **PRICES,
    )
    paths = {}
    for model in MODELS:
        out = f"{model}.parquet"
        sets = ["--set", f"request.model={model}", "--set", f"output.path={out}"]
        run = run_batchrun(job, emu, *sets)
        assert run.returncode == 0, run.stderr
        paths[model] = tmp / out
    return paths


def _labels(path: Path) -> tuple[list[str], list[str], pa.Table]:
    table = pq.read_table(path)
    status = table.column("status").to_pylist()
    got = table.column("sentiment").to_pylist()
    predicted = [
        g if s == "ok" and g is not None else NO_LABEL for s, g in zip(status, got, strict=True)
    ]
    return table.column("gold").to_pylist(), predicted, table


def test_every_gold_metric_equals_scikit_learns(outputs: dict[str, Path]) -> None:
    result = compare([str(p) for p in outputs.values()], gold="gold", columns=["sentiment"])
    assert [r.variant for r in result.results] == list(MODELS)
    for record in result.to_list():
        gold, predicted, table = _labels(outputs[record["variant"]])
        assert record["rows"] == table.num_rows == 300
        assert record["valid"] == sum(p != NO_LABEL for p in predicted)
        assert record["accuracy"] == pytest.approx(accuracy_score(gold, predicted))
        assert record["kappa"] == pytest.approx(cohen_kappa_score(gold, predicted))
        labels = record["confusion_matrix"]["labels"]
        expected = confusion_matrix(gold, predicted, labels=labels)
        assert record["confusion_matrix"]["matrix"] == expected.tolist()
        classes = list(record["per_class"])
        p, r, f, s = precision_recall_fscore_support(
            gold, predicted, labels=classes, zero_division=0
        )
        for i, name in enumerate(classes):
            figures = record["per_class"][name]
            assert figures["precision"] == pytest.approx(p[i])
            assert figures["recall"] == pytest.approx(r[i])
            assert figures["f1"] == pytest.approx(f[i])
            assert figures["support"] == s[i]
        cost = sum(c for c in table.column("cost_usd").to_pylist() if c is not None)
        assert record["cost_usd"] == pytest.approx(cost)
        assert record["cost_per_1k_rows"] == pytest.approx(cost / 300 * 1000)


def test_accuracy_follows_the_emulators_per_model_accuracy(outputs: dict[str, Path]) -> None:
    result = compare([str(p) for p in outputs.values()], gold="gold", columns=["sentiment"])
    for record in result.to_list():
        # 5% of first answers break the label set, and count as wrong.
        assert abs(record["accuracy"] - 0.95 * MODELS[record["variant"]]) < 0.08


def test_agreement_with_a_reference_equals_scikit_learns(outputs: dict[str, Path]) -> None:
    result = compare([str(p) for p in outputs.values()], reference="gpt-5.5", columns=["sentiment"])
    _, reference, _ = _labels(outputs["gpt-5.5"])
    for record in result.to_list():
        _, predicted, _ = _labels(outputs[record["variant"]])
        pairs = [(r, p) for r, p in zip(reference, predicted, strict=True) if r != NO_LABEL]
        truth, labels = [r for r, _ in pairs], [p for _, p in pairs]
        assert record["agreement"] == pytest.approx(accuracy_score(truth, labels))
        assert record["kappa"] == pytest.approx(cohen_kappa_score(truth, labels))
    assert result.to_list()[0]["agreement"] == 1.0


def test_the_recommendation_is_the_cheapest_within_the_margin(outputs: dict[str, Path]) -> None:
    paths = [str(p) for p in outputs.values()]
    records = compare(paths, gold="gold", columns=["sentiment"]).to_list()
    accuracy = {r["variant"]: r["accuracy"] for r in records}
    cost = {r["variant"]: r["cost_per_1k_rows"] for r in records}
    best = max(accuracy.values())
    for within in (0.0, 2.0, 15.0, 50.0):
        result = compare(paths, gold="gold", columns=["sentiment"], within=within)
        close = [v for v in accuracy if accuracy[v] >= best - within / 100 - 1e-12]
        assert result.recommended == min(close, key=lambda v: cost[v])
        assert [r["recommended"] for r in result.to_list()] == [
            r["variant"] == result.recommended for r in records
        ]


def _with_variant_column(outputs: dict[str, Path], path: Path) -> Path:
    """The three outputs as one file, a ``variant`` column after the input columns, each
    input row's variants together."""
    tables = []
    for model, source in outputs.items():
        table = pq.read_table(source)
        index = table.schema.get_field_index("response")
        tables.append(table.add_column(index, "variant", pa.array([model] * table.num_rows)))
    order = np.argsort(np.tile(np.arange(300), 3), kind="stable")
    combined = pa.concat_tables(tables).take(pa.array(order))
    metadata = pq.read_schema(next(iter(outputs.values()))).metadata
    pq.write_table(combined.replace_schema_metadata(metadata), path, row_group_size=100)
    return path


def test_a_variant_column_gives_the_same_figures_as_one_file_per_variant(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    combined = _with_variant_column(outputs, tmp_path / "all.parquet")
    apart = compare([str(p) for p in outputs.values()], gold="gold", columns=["sentiment"])
    together = compare([str(combined)], gold="gold", columns=["sentiment"])
    assert together.to_list() == apart.to_list()


def test_disagreements_are_the_rows_where_labels_differ(
    outputs: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "review.parquet"
    result = compare(
        [str(p) for p in outputs.values()],
        gold="gold",
        columns=["sentiment"],
        disagreements=str(path),
    )
    labels = {m: _labels(p)[1] for m, p in outputs.items()}
    gold = _labels(outputs["gpt-5.5"])[0]
    expected = [i for i in range(300) if len({labels[m][i] for m in MODELS} | {gold[i]}) > 1]
    review = pq.read_table(path)
    assert review.num_rows == result.disagreements == len(expected)
    assert review.column_names == ["id", "text", "gold"] + [f"sentiment[{m}]" for m in MODELS]
    assert review.column("id").to_pylist() == [f"r{i:04d}" for i in expected]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun", "compare", *args], capture_output=True, text=True
    )


def test_formats_print_the_figures_and_the_recommendation(outputs: dict[str, Path]) -> None:
    paths = [str(p) for p in outputs.values()]
    done = _cli(*paths, "--gold", "gold", "--columns", "sentiment", "--format", "json")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert list(records[0]) == [
        "variant", "column", "rows", "valid", "accuracy", "kappa", "per_class",
        "confusion_matrix", "cost_usd", "cost_per_1k_rows", "recommended",
    ]  # fmt: skip
    table = _cli(*paths, "--gold", "gold", "--columns", "sentiment")
    assert table.returncode == 0 and "recommended: " in table.stdout
    assert "confusion matrix" in table.stdout
    markdown = _cli(*paths, "--reference", "gpt-5.5", "--format", "markdown")
    assert markdown.stdout.startswith("| variant | column |")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gold", "truth"], "--gold: column 'truth' is not in the output"),
        (["--reference", "gpt-6"], "--reference: no variant 'gpt-6'"),
        (["--gold", "gold", "--columns", "status"], "--columns: 'status' is not a parsed"),
        (["--reference", "gpt-5.5", "--within", "-1"], "--within: -1.0 must be 0 or more"),
        (["--gold", "gold"], "--gold gold: say which column it grades with --columns"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    outputs: dict[str, Path], args: list[str], message: str
) -> None:
    done = _cli(*[str(p) for p in outputs.values()], *args)
    assert done.returncode == 2
    assert f"batchrun: error: {message}" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_outputs_of_different_jobs_exit_2(outputs: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.parquet"
    table = pq.read_table(outputs["glm-5.2"])
    metadata = dict(table.schema.metadata) | {b"batchrun.job": b"another-job"}
    pq.write_table(table.replace_schema_metadata(metadata), other)
    done = _cli(str(outputs["gpt-5.5"]), str(other), "--gold", "gold")
    assert done.returncode == 2
    assert "compare takes the outputs of one job" in done.stderr
    assert "Traceback" not in done.stderr
