"""Re-asks (``request.reask``): an answer breaking a column rule is asked again as a
follow-up turn, each a paced, billed, recorded attempt; the row's fingerprint stays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import billed_usd, run_batchrun, write_job

from batchrun._errors import JobError
from batchrun._types import Request
from batchrun.emulator.labels import declared_schema
from batchrun.job.load import load_job
from batchrun.send.reask import follow_up

SENTIMENTS = ["positive", "negative", "neutral"]
COLUMNS = {"sentiment": {"type": "string", "enum": SENTIMENTS}, "topic": "string"}


def _job(tmp_path: Path, reask: int, rows: int = 60) -> Path:
    return write_job(
        tmp_path,
        rows=rows,
        request={"max_completion_tokens": 100, "response_format": "json_object", "reask": reask},
        output={"parse": "json", "columns": COLUMNS},
        limits={"max_failed_rows": rows},
    )


def _rows(job: Path) -> list[dict[str, Any]]:
    return pq.read_table(job.parent / "out.parquet").to_pylist()


def test_a_broken_answer_is_asked_again_and_mended(tmp_path: Path, emulator) -> None:
    emu = emulator("--label-break-rate", "1.0")  # every first answer breaks the enum
    job = _job(tmp_path, reask=2)
    run = run_batchrun(job, emu)
    assert run.returncode == 0, run.stderr
    rows = _rows(job)
    assert {row["status"] for row in rows} == {"ok"}
    assert {row["sentiment"] for row in rows} <= set(SENTIMENTS)
    assert [(row["attempts"], row["reasks"]) for row in rows] == [(2, 1)] * 60
    ledger = emu.ledger()
    assert ledger["requests_billed"] == 120  # every re-ask is a billed request
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(billed_usd(ledger), rel=1e-9)


def test_without_reask_the_broken_answer_is_an_invalid_answer(tmp_path: Path, emulator) -> None:
    emu = emulator("--label-break-rate", "1.0")
    job = _job(tmp_path, reask=0)
    assert run_batchrun(job, emu).returncode == 0
    rows = _rows(job)
    assert {row["error_type"] for row in rows} == {"invalid_answer"}
    assert [(row["attempts"], row["reasks"]) for row in rows] == [(1, 0)] * 60
    assert "'unsure' is not in the enum" in rows[0]["error_message"]
    assert emu.ledger()["requests_billed"] == 60


def test_a_resume_neither_repeats_nor_loses_re_asks(tmp_path: Path, emulator) -> None:
    emu = emulator("--label-break-rate", "1.0")
    job = _job(tmp_path, reask=1)
    assert run_batchrun(job, emu).returncode == 0
    first = _rows(job)
    assert run_batchrun(job, emu).returncode == 0
    assert emu.ledger()["requests_billed"] == 120  # nothing sent again
    again = _rows(job)
    assert [(r["attempts"], r["reasks"], r["cost_usd"]) for r in again] == [
        (r["attempts"], r["reasks"], r["cost_usd"]) for r in first
    ]


def test_re_asks_stop_at_the_limit(tmp_path: Path, emulator) -> None:
    emu = emulator("--label-break-rate", "1.0")
    job = _job(tmp_path, reask=1, rows=10)
    assert run_batchrun(job, emu).returncode == 0
    assert all(row["reasks"] <= 1 for row in _rows(job))


def test_the_follow_up_carries_the_answer_and_what_was_wrong(tmp_path: Path) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Label: hi"}]}
    request = Request("k", body, "v1:abc", 10, 100)
    again = follow_up(request, '{"sentiment": "unsure"}', "column 'sentiment': 'unsure' ...")
    assert again.key == "k" and again.fingerprint == "v1:abc"
    assert again.body["messages"][1] == {"role": "assistant", "content": '{"sentiment": "unsure"}'}
    last = again.body["messages"][2]
    assert last["role"] == "user" and "column 'sentiment': 'unsure'" in last["content"]
    assert json.loads(again.wire or b"") == again.body
    assert again.est_prompt_tokens > request.est_prompt_tokens
    assert body["messages"] == [{"role": "user", "content": "Label: hi"}]  # not mutated
    assert declared_schema(again.body["messages"]) is None


def test_reask_needs_parsed_columns(tmp_path: Path) -> None:
    job = write_job(tmp_path, request={"reask": 2})
    with pytest.raises(JobError, match=r"request.reask: 2 needs output.parse = \"json\""):
        load_job(job)
    job = write_job(tmp_path, request={"reask": 11}, output={"parse": "json", "columns": COLUMNS})
    with pytest.raises(JobError, match=r"request.reask: 11 is out of range 0..10"):
        load_job(job)


# --- cut-off answers ----------------------------------------------------------------------


def _cut_job(tmp_path: Path, **request: Any) -> Path:
    return write_job(
        tmp_path,
        rows=30,
        request={"max_completion_tokens": 3, "response_format": "json_object", **request},
        output={"parse": "json", "columns": COLUMNS},
        limits={"max_failed_rows": 30},
    )


def test_a_cut_off_answer_is_retried_once_with_the_larger_limit(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = _cut_job(tmp_path, cut_off_retry_tokens=200)
    run = run_batchrun(job, emu)
    assert run.returncode == 0, run.stderr
    rows = _rows(job)
    assert {(r["status"], r["finish_reason"], r["attempts"]) for r in rows} == {("ok", "stop", 2)}
    assert all(r["cut_off_retried"] for r in rows)
    ledger = emu.ledger()
    assert ledger["requests_billed"] == 60
    assert sum(row["cost_usd"] for row in rows) == pytest.approx(billed_usd(ledger), rel=1e-9)


def test_without_the_key_a_cut_off_answer_stays_a_parse_error(tmp_path: Path, emulator) -> None:
    emu = emulator()
    job = _cut_job(tmp_path)
    assert run_batchrun(job, emu).returncode == 0
    rows = _rows(job)
    assert {(r["error_type"], r["attempts"], r["cut_off_retried"]) for r in rows} == {
        ("parse_error", 1, False)
    }
    assert "finish_reason=length" in rows[0]["error_message"]
