"""A terse server, like the LiteLLM proxy: limits stated without reset times, bare 429s.

The emulator's ``--terse-limits`` mode counts requests in fixed windows (refusals count
too) and answers a 429 with no header at all. ``--window-s 6`` shrinks its minute to 6 s
(the limits stay per minute: 600 RPM allows 60 requests a window), so recovery after the
429s at the start shows within ~30 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from conftest import run_batchrun, write_job

RPM, WINDOW_S = 600, 6.0
PER_WINDOW = RPM * WINDOW_S / 60


def test_after_a_burst_of_bare_429s_the_run_uses_the_stated_limit(
    tmp_path: Path, emulator: Any
) -> None:
    emu = emulator("--terse-limits", "--rpm", str(RPM), "--window-s", str(WINDOW_S))
    # No limits in the job; 64 at once exceed the first window's 60, so 429s come first.
    # max_attempts = 1: a 429 must not use up a row's attempts.
    rows = int(PER_WINDOW * 5.5)
    job = write_job(tmp_path, rows=rows, limits={"concurrency": 64, "max_attempts": 1})
    done = run_batchrun(job, emu, timeout=90)
    assert done.returncode == 0, done.stderr
    ledger = emu.ledger()
    out = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert (out["status"] == "ok").all()
    assert ledger["rate_limited"] > 0
    windows = ledger["admitted_per_window"]
    after_burst = windows[1:-1]  # whole windows after the one the 429s came in
    use = sum(after_burst) / (PER_WINDOW * len(after_burst))
    print(f"\nterse mode: admitted per window {windows}, use after the burst {use:.1%}")
    assert len(after_burst) >= 4
    assert use >= 0.90
    assert max(windows) <= PER_WINDOW
