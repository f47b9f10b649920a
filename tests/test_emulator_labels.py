"""The emulator's labeling answers: every declared column filled, inside its rules, with
labels that agree with a hidden truth at the chosen accuracy and break a rule at a chosen rate."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import run_batchrun, write_job

from batchrun.emulator.labels import (
    SCHEMA_MARK,
    LabelSettings,
    declared_schema,
    label_answer,
    true_label,
)
from batchrun.emulator.synth import Draws
from batchrun.job import columns
from batchrun.job.load import load_job
from batchrun.send.reask import correction
from batchrun.send.requests import RequestBuilder

SENTIMENTS = ["positive", "negative", "neutral"]
COLUMNS = {
    "sentiment": {"type": "string", "enum": SENTIMENTS},
    "topic": "string",
    "confidence": {"type": "double", "min": 0, "max": 1},
    "stars": {"type": "int64", "min": 1, "max": 5},
    "tags": {"type": "list<string>", "enum": ["price", "quality", "delivery"]},
}


def _job(tmp_path: Path, rows: int = 200) -> Path:
    return write_job(
        tmp_path,
        rows=rows,
        request={"max_completion_tokens": 200, "response_format": "json_object"},
        output={"parse": "json", "columns": COLUMNS},
        limits={"max_failed_rows": rows},
    )


def test_the_emulator_and_batchrun_share_the_schema_mark() -> None:
    assert SCHEMA_MARK == columns.SCHEMA_MARK


def test_requests_carry_the_json_schema_of_the_declared_columns(tmp_path: Path) -> None:
    job = load_job(_job(tmp_path, rows=3))
    batch = pa.RecordBatch.from_pylist([{"id": "a", "text": "hello"}])
    request = RequestBuilder(job, batch.schema).build(batch, 0)[0]
    system = request.body["messages"][0]  # type: ignore[union-attr]
    assert system["role"] == "developer" and system["content"].startswith(SCHEMA_MARK)
    schema = declared_schema(request.body["messages"])  # type: ignore[union-attr]
    assert schema is not None
    assert schema["properties"]["sentiment"]["enum"] == SENTIMENTS
    assert (
        request.wire
        == json.dumps(  # type: ignore[union-attr]
            request.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )


def test_a_run_on_the_emulator_fills_every_column_inside_its_rules(
    tmp_path: Path, emulator
) -> None:
    job = _job(tmp_path)
    run = run_batchrun(job, emulator())
    assert run.returncode == 0, run.stderr
    table = pq.read_table(job.parent / "out.parquet")
    assert table.column("status").to_pylist() == ["ok"] * 200
    for name in COLUMNS:
        assert table.column(name).null_count == 0, name
    assert set(table.column("sentiment").to_pylist()) <= set(SENTIMENTS)
    assert pc.min(table.column("confidence")).as_py() >= 0
    assert pc.max(table.column("confidence")).as_py() <= 1
    assert set(table.column("stars").to_pylist()) <= {1, 2, 3, 4, 5}


def test_labels_agree_with_the_truth_at_the_chosen_accuracy(tmp_path: Path, emulator) -> None:
    job = _job(tmp_path)
    run = run_batchrun(job, emulator("--label-accuracy", "gpt-5.5=0.7"))
    assert run.returncode == 0, run.stderr
    table = pq.read_table(job.parent / "out.parquet", columns=["text", "sentiment"])
    rows = table.to_pylist()
    hits = sum(r["sentiment"] == true_label("Label: " + r["text"], SENTIMENTS) for r in rows)
    assert 0.58 <= hits / len(rows) <= 0.82, hits


def test_perfect_accuracy_gives_the_truth_and_another_model_is_not_affected() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "enum": SENTIMENTS}}}
    settings = LabelSettings({"gpt-5.5": 1.0, "glm-5.2": 0.0})
    messages = [{"role": "user", "content": f"row {i}"} for i in range(50)]
    for i, message in enumerate(messages):
        truth = true_label(message["content"], SENTIMENTS)
        good = json.loads(label_answer(schema, [message], "gpt-5.5", settings, Draws(b"%d" % i)))
        bad = json.loads(label_answer(schema, [message], "glm-5.2", settings, Draws(b"%d" % i)))
        assert good["s"] == truth and bad["s"] != truth


def test_first_answers_break_a_rule_at_the_chosen_rate(tmp_path: Path, emulator) -> None:
    job = _job(tmp_path)
    run = run_batchrun(job, emulator("--label-break-rate", "0.3"))
    table = pq.read_table(job.parent / "out.parquet", columns=["status", "error_type"])
    broken = table.column("error_type").to_pylist().count("invalid_answer")
    assert run.returncode == 0, run.stderr  # max_failed_rows allows them
    assert 40 <= broken <= 80, broken
    assert table.column("status").to_pylist().count("ok") == 200 - broken


def test_a_later_turn_never_breaks_a_rule() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "enum": SENTIMENTS}}}
    settings = LabelSettings(break_rate=1.0)
    first = [{"role": "user", "content": "x"}]
    fix = {"role": "user", "content": correction("'unsure' is not in the enum")}
    later = [*first, {"role": "assistant", "content": "{}"}, fix]
    assert json.loads(label_answer(schema, first, "m", settings, Draws(b"k")))["s"] == "unsure"
    assert json.loads(label_answer(schema, later, "m", settings, Draws(b"k")))["s"] in SENTIMENTS
    # Few-shot example turns before the row's prompt do not make it a later turn.
    shots = [{"role": "user", "content": "e"}, {"role": "assistant", "content": "{}"}, *first]
    assert json.loads(label_answer(schema, shots, "m", settings, Draws(b"k")))["s"] == "unsure"


# --- empty columns are named ------------------------------------------------------------


def test_a_run_names_a_column_that_comes_back_empty(tmp_path: Path, emulator) -> None:
    job = _job(tmp_path, rows=50)
    run = run_batchrun(job, emulator("--label-omit", "topic"), "--summary-json", "summary.json")
    assert run.returncode == 0, run.stderr
    line = "column 'topic' null in 50/50 ok rows: the model's JSON has no value under 'topic'"
    assert f"warning: {line}" in run.stderr
    assert "'sentiment' null" not in run.stderr
    summary = json.loads((job.parent / "summary.json").read_text())
    assert summary["empty_columns"] == [line]


def test_a_run_with_every_column_filled_warns_of_nothing(tmp_path: Path, emulator) -> None:
    run = run_batchrun(_job(tmp_path, rows=30), emulator())
    assert run.returncode == 0, run.stderr
    assert "null in" not in run.stderr


def test_a_pilot_names_a_column_that_comes_back_empty(tmp_path: Path, emulator) -> None:
    import os
    import subprocess
    import sys

    emu = emulator("--label-omit", "topic", "--label-omit", "stars")
    job = _job(tmp_path, rows=40)
    base = f'api.base_url="{emu.base_url}"'
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", job.name, "--pilot", "10", "--set", base],
        cwd=job.parent,
        env={**os.environ, "MODELSTREAM_API_KEY": "sk-test"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "column 'topic' null in 10/10 ok rows" in done.stdout
    assert "column 'stars' null in 10/10 ok rows" in done.stdout
    assert "'sentiment' null" not in done.stdout
