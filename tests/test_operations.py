"""What a scheduler sees around a run: parseable log lines, the exit reason, a summary
on every exit, metrics, and reruns after a job-level stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import run_batchrun, start_batchrun, wait_for_requests, write_job
from prometheus_client.parser import text_string_to_metric_families

CUT_OFF = {
    "request": {"max_completion_tokens": 4, "response_format": "json_object"},
    "output": {"path": "out.parquet", "parse": "json", "columns": {"label": "string"}},
}


def json_lines(stderr: str) -> list[dict[str, object]]:
    """Every stderr line as a JSON object (fails on any line that is not one)."""
    lines = [json.loads(line) for line in stderr.splitlines()]
    for line in lines:
        assert {"ts", "level", "event", "message"} <= set(line), line
        assert "T" in str(line["ts"]) and str(line["ts"]).endswith("+00:00"), line
    return lines


def test_every_stderr_line_of_a_json_run_is_one_json_object_ending_with_the_exit(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=30)

    run = run_batchrun(job, emulator(), "--log-format", "json")

    assert run.returncode == 0, run.stderr
    lines = json_lines(run.stderr)
    events = [line["event"] for line in lines]
    assert events[0] == "run_started" and events[-1] == "run_finished", events
    last = lines[-1]
    assert last["exit_code"] == 0 and last["message"] == "exit 0: all 30 rows done"
    assert last["by_status"] == {"ok": 30} and last["sent"] == 30


def test_a_quiet_json_run_that_exits_1_ends_with_the_reason_in_words_and_the_summary_too(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=12, limits={"max_failed_rows": 5}, **CUT_OFF)

    run = run_batchrun(
        job, emulator(), "--log-format", "json", "--quiet", "--summary-json", "s.json"
    )

    assert run.returncode == 1, run.stderr
    (last,) = json_lines(run.stderr)
    reason = (
        "exit 1: 12 failed rows > limits.max_failed_rows = 5 (parse_error 12: the answers"
        " were cut off at max_completion_tokens = 4)"
    )
    assert last["event"] == "run_finished" and last["message"] == reason
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["exit_code"] == 1 and summary["exit_reason"] == reason
    assert summary["by_error_type"] == {"parse_error": 12}


def test_text_lines_carry_the_date_and_level_and_quiet_keeps_only_the_exit_line(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=5)

    run = run_batchrun(job, emulator(), "--quiet")

    assert run.returncode == 0, run.stderr
    (line,) = run.stderr.splitlines()
    date, rest = line.split(" ", 1)
    assert date[:4].isdigit() and "T" in date and date.endswith("+00:00")
    assert rest == "batchrun: info: exit 0: all 5 rows done"


def test_an_exit_2_replaces_an_earlier_summary_with_its_code_and_error(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=5)
    emu = emulator()
    assert run_batchrun(job, emu, "--summary-json", "s.json").returncode == 0
    (tmp_path / "input.csv").unlink()

    run = run_batchrun(job, emu, "--summary-json", "s.json", "--log-format", "json")

    assert run.returncode == 2
    (line,) = json_lines(run.stderr)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["exit_code"] == 2 and "input.csv" in summary["error"]
    assert summary["exit_reason"] == f"exit 2: {line['message']}"


def test_a_bad_argument_is_one_json_line_and_leaves_an_exit_2_summary(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=5)
    (tmp_path / "s.json").write_text('{"exit_code": 0}')

    run = run_batchrun(
        job, emulator(), "--limit", "0", "--summary-json", "s.json", "--log-format", "json"
    )

    assert run.returncode == 2
    (line,) = json_lines(run.stderr)
    assert line["level"] == "error" and "--limit" in str(line["message"])
    assert json.loads((tmp_path / "s.json").read_text())["exit_code"] == 2


def metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(path.read_text())
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k in ("status", "kind")))): (
            s.value
        )
        for family in families
        for s in family.samples
    }


def test_metrics_give_rows_requests_tokens_cost_exit_code_and_the_last_success(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=20)
    emu = emulator()

    run = run_batchrun(job, emu, "--metrics", "metrics/job.prom", "--quiet")

    assert run.returncode == 0, run.stderr
    found = metrics(tmp_path / "metrics/job.prom")
    assert found[("batchrun_rows", (("status", "ok"),))] == 20
    assert found[("batchrun_requests_sent", ())] == 20
    assert found[("batchrun_tokens", (("kind", "prompt"),))] > 0
    assert found[("batchrun_cost_usd", ())] > 0
    assert found[("batchrun_exit_code", ())] == 0
    assert found[("batchrun_running", ())] == 0
    first_success = found[("batchrun_last_success_timestamp_seconds", ())]
    (tmp_path / "input.csv").unlink()  # the next run exits 2: its success time stays

    failed = run_batchrun(job, emu, "--metrics", "metrics/job.prom", "--quiet")

    assert failed.returncode == 2
    again = metrics(tmp_path / "metrics/job.prom")
    assert again[("batchrun_exit_code", ())] == 2
    assert again[("batchrun_last_success_timestamp_seconds", ())] == first_success
    assert not [p for p in (tmp_path / "metrics").iterdir() if p.name != "job.prom"]


def test_metrics_and_progress_events_come_while_the_run_goes_on(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=40, limits={"concurrency": 1})
    emu = emulator("--latency-ms", "300")
    run = start_batchrun(job, emu, "--metrics", "m.prom", "--log-format", "json")
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "m.prom").exists():
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.1)
        live = metrics(tmp_path / "m.prom")
        assert live[("batchrun_running", ())] == 1
        assert 0 < live[("batchrun_requests_sent", ())] < 40
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 130
    finally:
        run.kill()
    assert metrics(tmp_path / "m.prom")[("batchrun_exit_code", ())] == 130
    lines = json_lines(run.stderr.read() if run.stderr else "")
    progress = [line for line in lines if line["event"] == "progress"]
    assert progress and {"rows_done", "sent", "failed", "rate_limited", "cost_usd"} <= set(
        progress[-1]
    )
    events = [line["event"] for line in lines]
    assert {"signal", "stopped"} <= set(events) and events[-2:] == ["run_summary", "run_finished"]


def test_rows_failed_by_an_early_stop_are_sent_again_by_a_plain_rerun_after_the_fix(
    tmp_path: Path, emulator
) -> None:
    rows = [{"id": f"r{i:03d}", "text": f"Review number {i:03d}."} for i in range(60)]
    job = write_job(tmp_path, rows=rows, limits={"concurrency": 4, "max_failed_rows": 0})
    refusing = emulator("--context-tokens", "3")  # every prompt alike too long: a 400 each

    stopped = run_batchrun(job, refusing, "--summary-json", "s.json")

    assert stopped.returncode == 4, stopped.stderr
    assert "sends them and every row not sent yet (no --retry-failed needed)" in stopped.stderr
    assert json.loads((tmp_path / "s.json").read_text())["exit_reason"].startswith(
        "exit 4: the API refused the job: the first "
    )
    fixed = emulator()

    rerun = run_batchrun(job, fixed)

    assert rerun.returncode == 0, rerun.stderr
    assert fixed.ledger()["requests_received"] == 60
    assert pq.read_table(tmp_path / "out.parquet").column("status").to_pylist() == ["ok"] * 60


def test_limit_writes_its_own_output_and_leaves_the_full_one(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=30)
    emu = emulator()
    assert run_batchrun(job, emu).returncode == 0
    full = (tmp_path / "out.parquet").read_bytes()

    trial = run_batchrun(job, emu, "--limit", "10", "--summary-json", "s.json")

    assert trial.returncode == 0, trial.stderr
    assert (tmp_path / "out.parquet").read_bytes() == full
    assert pq.read_table(tmp_path / "out.limit-10.parquet").num_rows == 10
    assert json.loads((tmp_path / "s.json").read_text())["output_path"] == "out.limit-10.parquet"
    assert emu.ledger()["requests_received"] == 30  # the trial reused the job's answers


def test_plan_emulate_plans_against_the_emulated_checkpoint(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=10)
    emulated = subprocess.run(
        [sys.executable, "-m", "batchrun", "run", job.name, "--emulate", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert emulated.returncode == 0, emulated.stderr

    plan = subprocess.run(
        [sys.executable, "-m", "batchrun", "plan", job.name, "--emulate", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert plan.returncode == 0, plan.stderr
    found = json.loads(plan.stdout)
    assert found["checkpoint_exists"] is True and "emulated" in found["checkpoint"]


def status(job: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "batchrun", "status", job.name, "--format", "json", *args],
        cwd=job.parent,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_status_polled_during_a_run_shows_progress_and_the_holder_and_never_blocks_it(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=60, limits={"concurrency": 2, "max_cost_usd": 5.0})
    emu = emulator("--latency-ms", "100")
    assert status(job)["checkpoint_exists"] is False
    run = start_batchrun(job, emu)
    seen = []
    try:
        wait_for_requests(emu, 4)
        while run.poll() is None:
            seen.append(status(job))
        assert run.wait(timeout=60) == 0
    finally:
        run.kill()
    live = [s for s in seen if s["running"]]
    assert live and all(s["lock_holder"]["pid"] == run.pid for s in live)
    # Answers commit every half second: some poll sees part of them, and their spend.
    partway = [s for s in live if 0 < s["answered_ok"] < 60]
    assert partway and all(s["spent_usd"] > 0 for s in partway)
    assert [s["answered_ok"] for s in live] == sorted(s["answered_ok"] for s in live)
    after = status(job)
    assert after["running"] is False and after["lock_holder"] is None
    assert after["answered_ok"] == 60 and after["pending_at_most"] == 0
    assert after["budget_left_usd"] == pytest.approx(5.0 - after["spent_usd"])
    assert after["last_commit"] is not None


def test_status_counts_failed_rows_by_error_type(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=8, **CUT_OFF)
    assert run_batchrun(job, emulator()).returncode == 1

    table = subprocess.run(
        [sys.executable, "-m", "batchrun", "status", job.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert table.returncode == 0, table.stderr
    assert "failed           8 (parse_error 8)" in table.stdout
    assert status(job)["failed_by_error_type"] == {"parse_error": 8}


def test_a_budget_stop_is_an_event_and_the_exit_line_says_what_to_do(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=200, limits={"max_cost_usd": 0.002, "concurrency": 4})

    run = run_batchrun(job, emulator(), "--log-format", "json", "--quiet")

    assert run.returncode == 3, run.stderr
    lines = json_lines(run.stderr)
    assert [line["event"] for line in lines] == ["budget_stop", "run_finished"]
    reason = str(lines[-1]["message"])
    assert reason.startswith("exit 3: stopped by the budget, limits.max_cost_usd = 0.002")
    assert reason.endswith("raise it and run the same command again to continue")


def test_a_pause_for_the_apis_rate_limit_is_a_paused_event(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=40)
    # Bare 429s with a vendor Retry-After (a LiteLLM proxy's), a 5 s window.
    emu = emulator("--rpm", "20", "--terse-limits", "--window-s", "5", "--vendor-retry-after")
    run = start_batchrun(job, emu, "--log-format", "json")
    killer = threading.Timer(30, run.kill)  # a bound on the wait for the line
    killer.start()
    try:
        assert run.stderr is not None
        events = iter(json.loads(line) for line in run.stderr)
        paused = next(line for line in events if line["event"] == "paused")
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 130
    finally:
        killer.cancel()
        run.kill()
    assert paused["pause_s"] == 5.0 and paused["reason"] == "llm_provider-retry-after"
    assert paused["logger"] == "batchrun.retry"


def test_a_metrics_file_that_cannot_be_written_is_one_warning_and_the_run_goes_on(
    tmp_path: Path, emulator
) -> None:
    job = write_job(tmp_path, rows=5)
    (tmp_path / "blocked").write_text("a file where the directory should be")

    run = run_batchrun(job, emulator(), "--metrics", "blocked/m.prom", "--log-format", "json")

    assert run.returncode == 0, run.stderr
    events = [line["event"] for line in json_lines(run.stderr)]
    assert events.count("metrics_error") == 1 and events[-1] == "run_finished"


def test_a_run_killed_outright_leaves_no_earlier_summary_behind(tmp_path: Path, emulator) -> None:
    job = write_job(tmp_path, rows=100, limits={"concurrency": 2})
    emu = emulator("--latency-ms", "200")
    (tmp_path / "s.json").write_text('{"exit_code": 0}')  # yesterday's
    run = start_batchrun(job, emu, "--summary-json", "s.json")
    try:
        wait_for_requests(emu, 1)
        run.kill()  # kill -9: no handler runs
        run.wait(timeout=30)
    finally:
        run.kill()

    assert not (tmp_path / "s.json").exists()
