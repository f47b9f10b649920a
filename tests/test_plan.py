"""``batchrun plan``: counts, estimates and prices a job without sending; ``--pilot`` sends a few.

Against a real emulator on loopback: its billing ledger proves what was (not) sent.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import job_toml

from batchrun._errors import JobError
from batchrun._runner import RunOptions, run_job
from batchrun.emulator import EmulatorProcess
from batchrun.job.load import load_job
from batchrun.plan.planner import plan_job, plan_job_file
from batchrun.store.checkpoint import Checkpoint

KEY_ENV = "BATCHRUN_PLAN_TEST_KEY"
REPO = Path(__file__).resolve().parents[1]
PRICE = {"input": 1.25, "cached_input": 0.125, "output": 10.0}


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess([], quiet=True) as emu:
        yield emu


@pytest.fixture
def emu(emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    """The module's emulator with an empty ledger; no API key in the environment."""
    emulator.reset()
    monkeypatch.delenv(KEY_ENV, raising=False)
    return emulator


def write_job(
    tmp_path: Path,
    rows: Sequence[Mapping[str, Any]],
    base_url: str = "http://127.0.0.1:9",
    **sections: Mapping[str, Any],
) -> Path:
    """A job over a CSV of ``rows``; ``sections`` merge into the job's tables."""
    source = tmp_path / "input.csv"
    with source.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    job: dict[str, dict[str, Any]] = {
        "job": {"name": "plan-test"},
        "input": {"path": str(source), "id_column": "id"},
        "api": {"base_url": base_url, "api_key_env": KEY_ENV},
        "request": {"model": "gpt-5.5", "prompt": "Label: {text}", "max_completion_tokens": 32},
        "limits": {"concurrency": 16, "max_attempts": 2},
        "output": {"path": str(tmp_path / "out.parquet")},
        'pricing."gpt-5.5"': dict(PRICE),
    }
    for name, values in sections.items():
        job.setdefault(name, {}).update(values)
    text = job_toml(job)
    path = tmp_path / "job.toml"
    path.write_text(text, encoding="utf-8")
    return path


def reviews(count: int) -> list[dict[str, str]]:
    return [{"id": f"r{i:04d}", "text": f"Review {i}: it was fine, mostly."} for i in range(count)]


def mixed_rows() -> list[dict[str, str]]:
    """60 rows: 50 distinct, then 5 with no text (invalid), then 5 repeating rows 45-49."""
    rows = reviews(50)
    rows += [{"id": f"r{i:04d}", "text": ""} for i in range(50, 55)]
    rows += [{"id": f"r{i:04d}", "text": rows[i - 10]["text"]} for i in range(55, 60)]
    return rows


def run(path: Path, emu: EmulatorProcess, **options: Any) -> Any:
    job = load_job(path)
    return run_job(job, RunOptions(base_url=emu.base_url, api_key="sk-test", **options))


def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    return subprocess.run(
        [sys.executable, "-m", "batchrun", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=base | dict(env or {}),
        cwd=REPO,
    )


# ---------------------------------------------------------------- sends nothing


def test_plan_sends_nothing_and_needs_no_api_key(tmp_path: Path, emu: EmulatorProcess) -> None:
    path = write_job(tmp_path, reviews(30), emu.base_url)

    plan = plan_job_file(path)

    assert plan.counts.requests == 30
    assert emu.ledger()["requests_received"] == 0


def test_plan_creates_no_checkpoint(tmp_path: Path, emu: EmulatorProcess) -> None:
    path = write_job(tmp_path, reviews(5), emu.base_url)

    plan = plan_job_file(path)

    assert not plan.checkpoint_exists
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.csv", "job.toml"]


def test_plan_reads_the_checkpoint_while_a_run_holds_its_lock(
    tmp_path: Path, emu: EmulatorProcess
) -> None:
    path = write_job(tmp_path, reviews(20), emu.base_url)
    run(path, emu, limit=5)
    job = load_job(path)

    with Checkpoint.open(job.output.checkpoint_path, job_name=job.name):
        plan = plan_job(job)

    assert plan.counts.done == 5


# ---------------------------------------------------------------- estimates


def test_prompt_token_estimate_is_within_15_percent_of_a_real_run(
    tmp_path: Path, emu: EmulatorProcess
) -> None:
    # The demo's shape: a fixed system prompt, and images on some rows.
    path = write_job(
        tmp_path,
        [{**row} for row in _demo_rows()],
        emu.base_url,
        request={
            "system_prompt": (REPO / "jobs" / "demo.toml").read_text()[:400],
            "prompt": "Review:\n{text}",
            "image_urls_column": "images",
            "image_detail": "low",
            "response_format": "json_object",
        },
    )
    plan = plan_job_file(path)

    run(path, emu)

    ledger = emu.ledger()
    assert ledger["requests_billed"] == plan.counts.requests
    real = ledger["tokens"]["prompt"]
    assert abs(plan.counts.prompt_tokens - real) <= 0.15 * real


def _demo_rows() -> list[dict[str, str]]:
    with (REPO / "sample_data" / "reviews.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{"id": r["review_id"], "text": r["text"], "images": r["images"]} for r in rows[:120]]


def test_plan_counts_done_invalid_and_duplicate_rows(tmp_path: Path, emu: EmulatorProcess) -> None:
    path = write_job(tmp_path, mixed_rows(), emu.base_url)
    run(path, emu, limit=10)

    counts = plan_job_file(path).counts

    assert (counts.rows, counts.done, counts.invalid) == (60, 10, 5)
    assert counts.to_send == 45  # rows 10-49 and the 5 repeats
    assert (counts.requests, counts.duplicates) == (40, 5)
    assert len(counts.invalid_reasons) == 5
    assert "r0050" in counts.invalid_reasons[0] and "text is" in counts.invalid_reasons[0]


def test_prompt_tokens_count_each_distinct_request_once(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "text": "same words"} for i in range(10)]

    counts = plan_job_file(write_job(tmp_path, rows)).counts

    assert (counts.to_send, counts.requests) == (10, 1)
    # "Label: same words": ceil(17 chars / 4) + 4 for its one message
    assert counts.prompt_tokens == 9


def test_failed_answers_count_as_done_and_are_named(tmp_path: Path, emu: EmulatorProcess) -> None:
    path = write_job(tmp_path, reviews(10), emu.base_url, limits={"max_attempts": 1})
    with EmulatorProcess(["--fail-rate", "1"], quiet=True) as failing:
        run(path, failing)

    plan = plan_job_file(path)

    assert (plan.counts.done, plan.counts.done_failed, plan.counts.to_send) == (10, 10, 0)
    assert "--retry-failed" in plan.render()


def test_cost_range_is_prompt_only_to_every_completion_token(tmp_path: Path) -> None:
    path = write_job(tmp_path, reviews(40), request={"max_completion_tokens": 100})

    plan = plan_job_file(path)

    prompt = plan.counts.prompt_tokens
    assert plan.cost_low == pytest.approx(prompt * 1.25 / 1e6)
    assert plan.cost_high == pytest.approx((prompt * 1.25 + 40 * 100 * 10.0) / 1e6)
    assert plan.cost_expected is None  # needs a pilot


def test_budget_verdict(tmp_path: Path) -> None:
    def verdict(budget: float) -> str | None:
        path = write_job(tmp_path, reviews(40), limits={"max_cost_usd": budget})
        return plan_job_file(path).budget_verdict

    assert verdict(100.0) == "covers the worst case"
    assert verdict(0.01).startswith("covers the low estimate")  # low ~0.0006, high ~0.013
    assert verdict(0.0001).startswith("too small")


def test_unpriced_model_has_no_cost(tmp_path: Path) -> None:
    path = write_job(tmp_path, reviews(3), request={"model": "no-price-model"})

    plan = plan_job_file(path)

    assert plan.cost_low is None and plan.cost_high is None
    assert "unpriced" in plan.render()


def test_time_follows_the_slowest_rate_limit(tmp_path: Path) -> None:
    limits = {"requests_per_minute": 60, "tokens_per_minute": 100_000}
    plan = plan_job_file(write_job(tmp_path, reviews(120), limits=limits))

    seconds, bound = plan.time

    tokens = plan.counts.prompt_tokens + 120 * 32
    assert seconds == pytest.approx(max(120.0, tokens / 100_000 * 60))
    assert "requests_per_minute" in bound


def test_time_is_unknown_without_limits(tmp_path: Path) -> None:
    plan = plan_job_file(write_job(tmp_path, reviews(3)))

    assert plan.time[0] is None
    assert "unknown: limited by the API's headers" in plan.render()


# ---------------------------------------------------------------- output formats


def test_render_is_an_aligned_table(tmp_path: Path) -> None:
    text = plan_job_file(write_job(tmp_path, mixed_rows())).render()

    assert text.startswith("plan for job 'plan-test' (no request sent)")
    labels = ("rows", "to send", "  requests", "prompt tokens", "cost low", "cost high", "time")
    ends = set()
    for label in labels:
        line = next(line for line in text.splitlines() if line.startswith(f"  {label} "))
        value = line[len(label) + 2 :].split()[0]
        ends.add(line.index(value, len(label) + 2) + len(value))
    assert len(ends) == 1, text  # figures right-aligned in one column
    assert "r0050" in text  # an invalid row's reason is quoted


def test_cli_json_format_without_api_key(tmp_path: Path) -> None:
    path = write_job(tmp_path, mixed_rows())

    done = cli("plan", str(path), "--format", "json")

    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["rows"]["rows"] == 60
    assert data["rows"]["duplicates"] == 5
    assert data["rows"]["invalid"] == 5
    assert data["cost_usd"]["low"] < data["cost_usd"]["high"]
    assert data["time"]["seconds"] is None
    assert data["pilot"] is None


def test_cli_var_and_set_apply(tmp_path: Path) -> None:
    path = write_job(tmp_path, reviews(4), output={"path": str(tmp_path / "out-${day}.parquet")})

    done = cli(
        "plan", str(path), "--var", "day=d1", "--set", "request.model=glm-x", "--format", "json"
    )

    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["output"].endswith("out-d1.parquet")
    assert data["model"] == "glm-x" and data["cost_usd"]["priced"] is False


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        ("request", {"prompt": "Label: {missing}"}, "request.prompt"),
        ("request", {"reasoning_effort": "extreme"}, "request.reasoning_effort"),
        ("limits", {"max_cost_usd": 1.0}, "limits.max_cost_usd"),
    ],
)
def test_cli_bad_job_exits_2_naming_the_key(
    tmp_path: Path, section: str, values: dict[str, Any], named: str
) -> None:
    extra = {"request": {"model": "unpriced"}} if named == "limits.max_cost_usd" else {}
    path = write_job(tmp_path, reviews(3), **{section: values}, **extra)

    done = cli("plan", str(path))

    assert done.returncode == 2
    assert " batchrun: error: " in done.stderr and named in done.stderr
    assert done.stdout == ""


def test_plan_refuses_a_checkpoint_of_another_job(tmp_path: Path, emu: EmulatorProcess) -> None:
    path = write_job(tmp_path, reviews(3), emu.base_url)
    run(path, emu)

    with pytest.raises(JobError, match="belongs to job 'plan-test'"):
        plan_job_file(path, sets=["job.name=other"])


# ---------------------------------------------------------------- pilot


def test_pilot_answers_are_checkpointed_and_not_sent_again(
    tmp_path: Path, emu: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_job(tmp_path, reviews(80), emu.base_url, request={"max_completion_tokens": 512})
    monkeypatch.setenv(KEY_ENV, "sk-test")

    plan = plan_job_file(path, pilot=8)

    assert plan.pilot is not None and (plan.pilot.sent, plan.pilot.ok) == (8, 8)
    assert emu.ledger()["requests_billed"] == 8
    assert plan.cost_low is not None and plan.cost_expected is not None
    assert plan.cost_high is not None and plan.cost_low < plan.cost_expected < plan.cost_high
    summary = run(path, emu)
    ledger = emu.ledger()
    assert ledger["requests_billed"] == 80 and ledger["duplicates_billed"] == 0
    assert summary.reused_from_checkpoint == 8


def test_pilot_samples_spread_over_the_rows_to_send(
    tmp_path: Path, emu: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_job(tmp_path, reviews(100), emu.base_url)
    monkeypatch.setenv(KEY_ENV, "sk-test")

    plan_job_file(path, pilot=4)

    # The centres of four equal slices of the 100 rows to send.
    assert _checkpointed_keys(load_job(path).output.checkpoint_path) == [
        "r0012",
        "r0037",
        "r0062",
        "r0087",
    ]
    assert plan_job_file(path).counts.done == 4


def _checkpointed_keys(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(key for (key,) in conn.execute("SELECT owner_key FROM answers"))


def test_pilot_needs_the_api_key(tmp_path: Path, emu: EmulatorProcess) -> None:
    path = write_job(tmp_path, reviews(5), emu.base_url)

    with pytest.raises(JobError, match=KEY_ENV):
        plan_job_file(path, pilot=2)
    assert emu.ledger()["requests_received"] == 0


def test_cli_pilot_on_the_emulator_says_so(tmp_path: Path) -> None:
    path = write_job(tmp_path, reviews(30))

    done = cli("plan", str(path), "--pilot", "3", "--emulate", "--format", "json")

    assert done.returncode == 0, done.stderr
    assert "PILOT" in done.stderr and "SYNTHETIC" in done.stderr
    pilot = json.loads(done.stdout)["pilot"]
    assert (pilot["sent"], pilot["ok"], pilot["synthetic"]) == (3, 3, True)
    assert pilot["mean_completion_tokens"] > 0
