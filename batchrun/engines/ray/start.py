"""Importing Ray and opening a Ray session: joining a cluster or starting a local one.

A local Ray keeps Unix sockets under its temp dir (``<tmp>/ray/session_<time>_<pid>/
sockets/plasma_store``), and a socket path may not exceed 107 bytes on Linux. Ray takes
``<tmp>`` from ``RAY_TMPDIR``, else ``TMPDIR``: a long ``TMPDIR`` (CI runners, pytest's
``tmp_path``, nested sandboxes) made ``ray.init`` die with a traceback. Here a ``TMPDIR``
too long for the sockets is passed over for ``/tmp`` (Ray's own default without it); a
``RAY_TMPDIR`` too long is the user's explicit choice, so the run stops with one line
saying what to set.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from batchrun._errors import JobError

SOCKET_PATH_MAX = 107
"""Bytes a Unix socket path may hold on Linux (108 with the terminating NUL)."""
SOCKET_SUFFIX_BYTES = len("/ray/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.9")
"""What Ray appends to its temp dir for its longest socket path."""
SHORT_TEMP_DIR = "/tmp"


def import_ray() -> Any:
    """``ray`` (and ``ray.data``), or a ``JobError`` saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no calls home
    try:
        import ray
        import ray.data
    except ImportError:
        raise JobError("--engine ray needs Ray: pip install 'batchrun[ray]' (ray[data])") from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the Ray cluster at ``address``, or start a local one with this machine's
    cores; a session already open in this process (tests, notebooks) is used as is."""
    ray = import_ray()
    if ray.is_initialized():
        _configure_data(ray)
        yield
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(
            # "local": a new instance even when another is running on this machine
            # (without it, Ray joins the one /tmp/ray/ray_current_cluster names).
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            **local_temp_dir(os.environ),
        )
    try:
        _configure_data(ray)
        yield
    finally:
        ray.shutdown()


def local_temp_dir(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """``ray.init``'s ``_temp_dir`` when Ray's own choice cannot hold its sockets ({} when
    it can); a ``JobError`` when ``RAY_TMPDIR`` itself is too long."""
    if not sys.platform.startswith("linux"):
        return {}  # macOS: Ray uses /tmp unless RAY_TMPDIR says otherwise
    explicit = environ.get("RAY_TMPDIR")
    if explicit is not None:
        if _fits(explicit):
            return {}
        raise JobError(
            f"RAY_TMPDIR: {explicit!r} is too long for Ray's sockets (at most"
            f" {SOCKET_PATH_MAX - SOCKET_SUFFIX_BYTES} bytes); set RAY_TMPDIR to a short"
            " directory such as /tmp"
        )
    if _fits(environ.get("TMPDIR") or SHORT_TEMP_DIR):
        return {}
    return {"_temp_dir": os.path.join(SHORT_TEMP_DIR, "ray")}


def _fits(temp_dir: str) -> bool:
    return len(temp_dir.rstrip("/").encode("utf-8")) + SOCKET_SUFFIX_BYTES <= SOCKET_PATH_MAX


def _configure_data(ray: Any) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the output is in input order
    ctx.enable_progress_bars = False  # the CLI draws its own
    logging.getLogger("ray.data").setLevel(logging.WARNING)


class StartMarks:
    """When each step of a Ray run's start came, on the wall clock (steps happen in
    several processes, maybe on several hosts); logged by the driver at the end."""

    def __init__(self) -> None:
        self.at: dict[str, list[float]] = {}

    def mark(self, step: str, wall: float | None = None) -> None:
        self.at.setdefault(step, []).append(time.time() if wall is None else wall)

    def update(self, other: dict[str, list[float]]) -> None:
        for step, walls in other.items():
            self.at.setdefault(step, []).extend(walls)

    def seconds(self, origin: float) -> dict[str, tuple[float, float]]:
        """Each step's first and last time, in seconds after ``origin``, in time order."""
        spans = {step: (min(w) - origin, max(w) - origin) for step, w in self.at.items() if w}
        return dict(sorted(spans.items(), key=lambda item: item[1]))

    def line(self, origin: float) -> str:
        parts = []
        for step, (first, last) in self.seconds(origin).items():
            span = f"{first:.1f}" if last - first < 0.05 else f"{first:.1f}-{last:.1f}"
            parts.append(f"{step} {span}")
        return ", ".join(parts)


def process_started() -> float | None:
    """When this process started (wall clock), from ``/proc`` (None where there is none)."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as uptime:
            up = float(uptime.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - up + ticks / os.sysconf("SC_CLK_TCK")


__all__ = ["StartMarks", "import_ray", "local_temp_dir", "process_started", "ray_session"]
