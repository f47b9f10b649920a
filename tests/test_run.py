"""`batchrun run` as a user runs it: exit codes, what reaches stderr, and the summary JSON.

SPEC, "Commands" -> exit codes 0, 1, 2, 4; "Guarantees" -> Secrets.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import billed_usd, review_rows, run_batchrun, write_job

from batchrun._types import EXTRA_COLUMNS, RESULT_COLUMNS


def statuses(job: Path) -> Counter[str]:
    return Counter(pq.read_table(job.parent / "out.parquet").column("status").to_pylist())


def rows_with_blank_text(count: int, blank: int) -> list[dict[str, str]]:
    rows = review_rows(count)
    for row in rows[:blank]:
        row["text"] = ""
    return rows


def test_a_finished_job_exits_0_with_the_input_columns_then_the_result_columns(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=50)

    run = run_batchrun(job, emulator())

    assert run.returncode == 0, run.stderr
    table = pq.read_table(job.parent / "out.parquet")
    assert table.column_names == ["id", "text", *RESULT_COLUMNS, *EXTRA_COLUMNS]
    assert table.column("status").to_pylist() == ["ok"] * 50


@pytest.mark.parametrize(("max_failed_rows", "exit_code"), [(4, 1), (5, 0)])
def test_exit_code_says_whether_failed_rows_exceed_max_failed_rows(
    tmp_path: Path, emulator, max_failed_rows: int, exit_code: int
) -> None:
    emu = emulator()
    job = write_job(
        tmp_path, rows=rows_with_blank_text(60, 5), limits={"max_failed_rows": max_failed_rows}
    )

    run = run_batchrun(job, emu)

    assert run.returncode == exit_code, run.stderr
    assert statuses(job) == {"ok": 55, "invalid": 5}
    assert emu.ledger()["requests_received"] == 55  # invalid rows are never sent


BAD_JOBS = {
    "bad enum value": {"request": {"reasoning_effort": "extreme"}},
    "template names a missing column": {"request": {"prompt": "Label: {body}"}},
    "unknown key": {"limits": {"concurency": 4}},
    "budget without a price": {"request": {"model": "glm-5.2"}, "limits": {"max_cost_usd": 1.0}},
}


@pytest.mark.parametrize("overrides", BAD_JOBS.values(), ids=BAD_JOBS.keys())
def test_a_bad_job_file_exits_2_with_one_line_and_sends_nothing(
    tmp_path: Path, emulator, overrides: dict
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=10, **overrides)

    run = run_batchrun(job, emu)

    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert " batchrun: error: " in run.stderr
    assert emu.ledger()["requests_received"] == 0


@pytest.mark.parametrize("args", [["--shard", "4/2"], ["--limit", "0"], ["--set", "nokey"]])
def test_bad_arguments_exit_2_with_one_line_and_send_nothing(
    tmp_path: Path, emulator, args: list[str]
) -> None:
    emu = emulator()
    job = write_job(tmp_path, rows=10)

    run = run_batchrun(job, emu, *args)

    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert emu.ledger()["requests_received"] == 0


def test_a_rejected_key_exits_4_at_once_never_writes_the_key_and_a_good_key_resumes(
    tmp_path: Path, emulator
) -> None:
    emu = emulator("--api-key", "sk-good", "--latency-ms", "20")
    bad_key = "sk-bad-f00dcafe-5ecret"
    job = write_job(tmp_path, rows=300, limits={"concurrency": 8})

    started = time.monotonic()
    refused = run_batchrun(job, emu, key=bad_key)

    assert refused.returncode == 4, refused.stderr
    assert time.monotonic() - started < 15
    assert emu.ledger()["requests_received"] <= 8
    assert statuses(job) == {"pending": 300}
    written = [p.read_bytes() for p in tmp_path.glob("out.parquet*") if p.is_file()]
    assert written and not any(bad_key.encode() in data for data in written)
    assert bad_key not in refused.stderr + refused.stdout
    resumed = run_batchrun(job, emu, key="sk-good")
    assert resumed.returncode == 0, resumed.stderr
    assert statuses(job) == {"ok": 300}


def test_an_unknown_model_exits_4(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=20)

    run = run_batchrun(job, emulator(), "--set", 'request.model="no-such-model"')

    assert run.returncode == 4, run.stderr
    assert "no-such-model" in run.stderr


def test_summary_json_reports_statuses_tokens_cost_dedupe_retries_429s_time_and_path(
    tmp_path: Path, emulator
) -> None:
    emu = emulator("--fail-rate", "0.2", "--seed", "11")
    rows = rows_with_blank_text(100, 4)
    rows += [{"id": f"dup{i}", "text": rows[-1]["text"]} for i in range(6)]
    job = write_job(tmp_path, rows=rows, limits={"max_failed_rows": 4, "max_attempts": 8})
    path = tmp_path / "reports" / "summary.json"

    run = run_batchrun(job, emu, "--summary-json", str(path))

    assert run.returncode == 0, run.stderr
    summary = json.loads(path.read_text())
    ledger = emu.ledger()
    assert summary["by_status"] == {"ok": 102, "invalid": 4}
    assert summary["rows"] == 106
    assert summary["prompt_tokens"] == ledger["tokens"]["prompt"]
    assert summary["completion_tokens"] == ledger["tokens"]["completion"]
    assert summary["cost_usd"] == pytest.approx(billed_usd(ledger))
    assert summary["dedupe_saved_requests"] == 6
    assert summary["dedupe_saved_usd"] > 0
    assert summary["sent"] == ledger["requests_received"] == 96 + summary["retries"]
    assert summary["retries"] == ledger["faults"]["fail"] > 0
    assert summary["rate_limited"] == ledger["rate_limited"]
    assert 0 < summary["wall_s"] < 60
    assert summary["output_path"] == "out.parquet"  # as the job file says
    assert summary["exit_code"] == 0
