"""Headers at their edges, through real runs against the emulator: nonsense values are
ignored with one warning, a pause is capped and announced, a signal ends a paused run.

The emulator's ``--header-value NAME=VALUE`` puts a literal header on every chat answer
(429s included), in place of any of that name it would send.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import run_batchrun, start_batchrun, wait_for_requests, write_job

from batchrun.send.headers import MAX_WAIT_S, parse_rate_info
from batchrun.send.ratelimit import PAUSE_CAP_S

# A terse server (as the LiteLLM proxy) with 1 s windows: 1,200 RPM is 20 a window, so 32
# workers draw 429s at once.
TERSE = ("--terse-limits", "--rpm", "1200", "--window-s", "1")


def _statuses(job: Path) -> list[str]:
    return list(pq.read_table(job.parent / "out.parquet").column("status").to_pylist())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retry-after", "NaN"),
        ("retry-after", "1e400"),
        ("x-ratelimit-remaining-tokens", "inf"),
        ("x-ratelimit-limit-requests", "-3"),
        ("retry-after", "Tue, 08 Dec 9999 00:00:00 GMT"),
    ],
)
def test_a_header_value_out_of_bounds_is_ignored_with_one_warning(
    tmp_path: Path, emulator: Any, name: str, value: str
) -> None:
    emu = emulator(*TERSE, "--header-value", f"{name}={value}")
    job = write_job(tmp_path, rows=60, limits={"concurrency": 32})
    started = time.monotonic()
    done = run_batchrun(job, emu, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count(f"ignored the {name} header") == 1, done.stderr
    assert _statuses(job) == ["ok"] * 60
    assert emu.ledger()["rate_limited"] > 0  # and every 429 carried it
    assert time.monotonic() - started < 20


def test_the_litellm_429_pauses_as_it_asks_and_says_so(tmp_path: Path, emulator: Any) -> None:
    # The proxy's 429 carries llm_provider-retry-after: <window>; here a 6 s window.
    emu = emulator("--terse-limits", "--vendor-retry-after", "--rpm", "600", "--window-s", "6")
    job = write_job(tmp_path, rows=80, limits={"concurrency": 64})
    done = run_batchrun(job, emu, timeout=90)
    assert done.returncode == 0, done.stderr
    assert "paused 6 s: the server asked (llm_provider-retry-after)" in done.stderr
    assert _statuses(job) == ["ok"] * 80


def test_a_pause_is_capped_and_a_signal_ends_it_at_once(tmp_path: Path, emulator: Any) -> None:
    emu = emulator(*TERSE, "--header-value", "retry-after=86000")
    job = write_job(tmp_path, rows=200, limits={"concurrency": 32})
    run = start_batchrun(job, emu)
    wait_for_requests(emu, 21)  # the first window's 20, then 429s
    time.sleep(1.0)
    signalled_at = time.monotonic()
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 130, stderr
    assert time.monotonic() - signalled_at < 5
    assert f"paused {PAUSE_CAP_S:.0f} s: the server asked (retry-after)" in stderr


def test_sane_values_are_read_and_insane_ones_are_none() -> None:
    def parse(**headers: str) -> Any:
        raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
        return parse_rate_info(raw)

    assert parse(retry_after="30").pause() == (30.0, "retry-after")
    assert parse(retry_after_ms="NaN", retry_after="2").pause() == (2.0, "retry-after")
    assert parse(retry_after=str(MAX_WAIT_S + 1)).retry_after_s is None
    info = parse(x_ratelimit_limit_tokens="inf", x_ratelimit_remaining_requests="nan")
    assert (info.limit_tokens, info.remaining_requests) == (None, None)
    assert parse(x_ratelimit_limit_requests="1200.0").limit_requests == 1200
