"""Progress: a log line every few seconds without a TTY, a tqdm bar on one, nothing with --quiet."""

from __future__ import annotations

import bisect
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from conftest import batchrun_command, batchrun_env, run_batchrun, write_job
from test_ratelimit import _drive, _virtual, window_maxima

from batchrun import cli
from batchrun.emulator import EmulatorProcess
from batchrun.send.headers import RateInfo
from batchrun.send.ratelimit import Pacer

LINE = re.compile(r"(\d+)/(\d+) rows, err=(\d+) 429=(\d+) \$\d+\.\d{4}(?: limit use=(\d+)%)?")


def test_without_a_tty_log_lines_show_rows_errors_429s_cost_and_limit_use(
    tmp_path: Path, emulator: Callable[..., EmulatorProcess]
) -> None:
    # 150 rows at 1,200 a minute take about 7.5 s: a line at the start, one after 5 s.
    job = write_job(tmp_path, rows=150, limits={"requests_per_minute": 1200})
    done = run_batchrun(job, emulator())
    assert done.returncode == 0, done.stderr
    lines = list(LINE.finditer(done.stderr))
    assert len(lines) >= 2 and all(int(m[2]) == 150 for m in lines)
    uses = [int(m[5]) for m in lines if m[5] is not None]
    # The share of the minute's 1,200 sent so far (about 100 at the 5 s line).
    assert uses and all(0 <= use <= 100 for use in uses) and uses[-1] >= 5, uses


def test_limit_use_never_reads_over_100_percent_and_reads_the_pace_after_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 32 sends before the limit is known, then the pacer at the 120 RPM the API states
    # (a window wait included): replayed into the display every 0.2 s.
    async def main() -> list[float]:
        pacer = Pacer(None, None, clock=trio.current_time)
        first = [await pacer.acquire(1) for _ in range(32)]
        pacer.observe(RateInfo(limit_requests=120))
        return first + [at for at, _ in await _drive(pacer, [1], 32, 180.0)]

    sends = sorted(_virtual(main))
    now = [0.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: now[0])
    display = cli._ProgressDisplay(bar=False)
    uses = []
    for step in range(900):
        now[0] = step * 0.2
        counters = SimpleNamespace(sent=bisect.bisect_right(sends, now[0]), rpm_limit=120)
        uses.append((now[0], display._rate_use(counters) or 0.0))
    assert window_maxima([(at, 1) for at in sends])[0] <= 120
    assert max(use for _, use in uses) <= 1.0
    assert min(use for at, use in uses if 3 <= at < 60) >= 0.95  # paced, then a full window
    assert min(use for at, use in uses if at >= 61) >= 0.7  # the pace picks up after the wait
    assert min(use for at, use in uses if at >= 72) >= 0.95


def test_quiet_prints_no_progress(tmp_path: Path, emulator: Callable[..., EmulatorProcess]) -> None:
    job = write_job(tmp_path, rows=20)
    done = run_batchrun(job, emulator(), "--quiet")
    assert done.returncode == 0, done.stderr
    assert LINE.search(done.stderr) is None
    assert "rows, err=" not in done.stdout + done.stderr


def test_on_a_tty_a_bar_shows_rows_rate_eta_and_the_counters(
    tmp_path: Path, emulator: Callable[..., EmulatorProcess]
) -> None:
    job = write_job(tmp_path, rows=60, limits={"requests_per_minute": 1200})
    master, process = _on_a_terminal(job, emulator())
    with process:
        screen = _read_all(master)
        assert process.wait(timeout=60) == 0, screen
    # e.g. "100%|████| 60/60 [00:03<00:00, 19.6row/s, err=0 429=0 $0.0009 limit use=98%]"
    bar = re.search(r"(\d+)/60 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+row/s, err=0 429=0 \$\d", screen)
    assert bar is not None, screen
    assert "60/60" in screen


def test_on_a_tty_the_signal_warning_is_a_line_of_its_own_above_the_bar(
    tmp_path: Path, emulator: Callable[..., EmulatorProcess]
) -> None:
    job = write_job(tmp_path, rows=200, limits={"requests_per_minute": 600})
    master, process = _on_a_terminal(job, emulator("--latency-ms", "200"))
    with process:
        before = _read_until(master, re.compile(r"\d+/200 \[\d\d:\d\d<"), timeout=30)
        process.send_signal(signal.SIGINT)
        screen = before + _read_all(master)
        assert process.wait(timeout=30) == 130, screen
    warning = screen.index("SIGINT: sending nothing more")
    # What the terminal shows on that line before the warning: the log prefix, no bar.
    line = re.split(r"[\r\n]", screen[:warning])[-1]
    prefix = r"(\x1b\[[0-9;]*[A-Za-z])*\d{4}-\d\d-\d\dT[\d:.]+\+00:00 batchrun: warning: "
    assert re.fullmatch(prefix, line), repr(line)


def _on_a_terminal(job: Path, emu: EmulatorProcess) -> tuple[int, subprocess.Popen[bytes]]:
    """``batchrun run`` with its stderr on a 160-column pty; returns (pty master, process)."""
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(
        batchrun_command(job, emu),
        cwd=job.parent,
        env=batchrun_env(),
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    return master, process


def _read_until(fd: int, pattern: re.Pattern[str], timeout: float) -> str:
    """What the terminal got until ``pattern`` shows (a drawn bar)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not pattern.search(b"".join(chunks).decode("utf-8", "replace")):
        assert time.monotonic() < deadline, b"".join(chunks)
        if select.select([fd], [], [], 0.1)[0]:
            chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode("utf-8", "replace")


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_pause_the_server_asked_for_shows_on_the_progress_line() -> None:
    counters = SimpleNamespace(
        failed=0, rate_limited=3, cost_usd=0.0, rate_use=0.99, finished=40, total=100,
        paused=(time.monotonic() + 42.4, "llm_provider-retry-after"),
    )  # fmt: skip
    line = cli._progress_line(counters)
    assert line.endswith("paused 42 s more: the server asked (llm_provider-retry-after)"), line
    counters.paused = (time.monotonic() - 1, "retry-after")  # over: no longer shown
    assert "paused" not in cli._progress_line(counters)
