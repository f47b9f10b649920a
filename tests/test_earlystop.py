"""A misconfigured job stops early (exit 4); a job with bad rows among good ones does not.

Issue 11, "A misconfigured job stops early": a proxy that answers an unknown model with
HTTP 400 made batchrun fail every row and exit 1 at the end.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import review_rows, run_batchrun, write_job

from batchrun._errors import FatalApiError
from batchrun._types import Result
from batchrun.send.earlystop import STOP_AFTER, FirstAnswers

CONCURRENCY = 8


def statuses(job: Path) -> Counter[str]:
    return Counter(pq.read_table(job.parent / "out.parquet").column("status").to_pylist())


def test_a_job_whose_every_row_gets_the_same_400_stops_with_exit_4(
    tmp_path: Path, emulator
) -> None:
    emu = emulator()
    # The emulator's validation answers an invalid value with HTTP 400 for every row.
    job = write_job(tmp_path, rows=500, limits={"concurrency": CONCURRENCY})

    run = run_batchrun(job, emu, "--set", 'request.extra.verbosity="loud"')

    assert run.returncode == 4, run.stderr
    assert "'loud'" in run.stderr and "verbosity" in run.stderr
    sent = emu.ledger()["requests_received"]
    assert STOP_AFTER <= sent <= STOP_AFTER + CONCURRENCY
    # The rows failed by the job, not by themselves: a plain rerun sends them again.
    assert statuses(job) == {"pending": 500}


def test_a_job_with_bad_rows_first_among_good_ones_finishes_every_row(
    tmp_path: Path, emulator
) -> None:
    # 30 identical too-long rows come first and fail at once (same 400, same message);
    # good rows take 150 ms. The first 20 answers are all that error, yet good rows are
    # in flight: the run must wait for them, see them succeed and go on.
    emu = emulator("--context-tokens", "200", "--latency-ms", "150")
    long_text = "far too long " * 100  # each row its own text, all of one length
    rows = [{"id": f"long{i:02d}", "text": f"{i:02d} {long_text}"} for i in range(30)]
    rows += review_rows(70)
    job = write_job(tmp_path, rows=rows, limits={"concurrency": 32, "max_failed_rows": 30})

    run = run_batchrun(job, emu)

    assert run.returncode == 0, run.stderr
    assert statuses(job) == {"error": 30, "ok": 70}
    assert emu.ledger()["requests_received"] == 100


def _error(message: str = "bad value") -> Result:
    return Result(status="error", error_type="invalid_value", error_message=message)


def test_the_rule_counts_only_identical_non_retryable_errors_before_any_ok() -> None:
    watch = FirstAnswers(stop_after=3)
    watch.finished(_error(), permanent=True)
    watch.finished(_error("http 503"), permanent=False)  # retryable: neither counts nor disarms
    watch.finished(_error(), permanent=True)
    assert not watch.holding
    watch.finished(_error(), permanent=True)
    assert watch.holding
    watch.verdict(in_flight=1)  # requests in flight: no verdict yet
    with pytest.raises(FatalApiError, match="bad value"):
        watch.verdict(in_flight=0)


@pytest.mark.parametrize("other", [Result(status="ok"), _error("another message")])
def test_an_ok_row_or_another_error_disarms_the_rule(other: Result) -> None:
    watch = FirstAnswers(stop_after=3)
    watch.finished(_error(), permanent=True)
    watch.finished(other, permanent=True)
    for _ in range(10):
        watch.finished(_error(), permanent=True)
    assert not watch.holding and not watch.armed
    watch.verdict(in_flight=0)  # no stop
