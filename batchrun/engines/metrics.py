"""``--metrics PATH``: the run as Prometheus metrics, in the node_exporter textfile
collector's format, rewritten every few seconds and at the end.

The file is written by ``prometheus_client.write_to_textfile`` (a temp file renamed
over the old one: a scraper never reads half a file). Every metric carries the job's
name and shard, so one collector directory can hold the files of many jobs.
``batchrun_last_success_timestamp_seconds`` is carried over from the file an earlier
run of the job left there.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families

from batchrun.engines.base import RunSummary
from batchrun.engines.pipeline import Progress

__all__ = ["WRITE_EVERY_S", "RunMetrics"]

log = logging.getLogger("batchrun")

WRITE_EVERY_S = 5.0
_LAST_SUCCESS = "batchrun_last_success_timestamp_seconds"
_TOKEN_KINDS = ("prompt", "cached", "completion", "reasoning")


class RunMetrics:
    """The metrics of one run; ``watch`` starts the periodic writes, ``finish`` ends them."""

    def __init__(self, path: Path, job: str, shard: str = "", every_s: float = WRITE_EVERY_S):
        self.path = path
        self.every_s = every_s
        self.labels = {"job": job, "shard": shard}
        self.started = time.time()
        self.progress: Progress | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._failed = False
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}
        self._gauge("rows", "Rows of the run by status", "status")
        self._gauge("requests_sent", "HTTP requests sent by this run (attempts)")
        self._gauge("responses_429", "429 (rate limited) answers this run got")
        self._gauge("retries", "Attempts this run sent again after a failure")
        self._gauge("tokens", "Tokens of the output's answers by kind (at the end)", "kind")
        self._gauge("cost_usd", "What this run spent, USD")
        self._gauge("limit_use_ratio", "Requests per minute sent over the RPM limit in use")
        self._gauge("run_start_timestamp_seconds", "When the run started (Unix time)")
        self._gauge("run_duration_seconds", "How long the run has taken")
        self._gauge("running", "1 while the run goes on, 0 once it ended")
        self._gauge("exit_code", "The run's exit code (written at the end)")
        self._gauge("last_success_timestamp_seconds", "When a run of this job last exited 0")
        last = _last_success(path, self.labels)
        if last is not None:
            self._set("last_success_timestamp_seconds", last)
        self._set("run_start_timestamp_seconds", self.started)
        self._set("running", 1)

    def watch(self, progress: Progress) -> None:
        """The run's live counters (the progress callback's argument); starts the writes."""
        if self.progress is None:
            self.progress = progress
            self._thread = threading.Thread(target=self._loop, name="metrics", daemon=True)
            self._thread.start()

    def finish(self, summary: RunSummary | None = None, exit_code: int | None = None) -> None:
        """The last write: the summary's figures (or only the exit code of a run that
        ended before it had one)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        code = summary.exit_code if summary is not None else exit_code
        if summary is not None:
            self._final(summary)
        self._set("exit_code", code if code is not None else float("nan"))
        if code == 0:
            self._set("last_success_timestamp_seconds", time.time())
        self._set("running", 0)
        self.write()

    def write(self) -> None:
        with self._lock:
            if self.progress is not None:
                self._live(self.progress)
            self._set("run_duration_seconds", time.time() - self.started)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_to_textfile(str(self.path), self.registry)
            except OSError as exc:  # the run goes on without its metrics; said once
                if not self._failed:
                    self._failed = True
                    log.warning(
                        "--metrics: cannot write %s: %s",
                        *(self.path, exc.strerror or exc),
                        extra={"event": "metrics_error", "path": str(self.path)},
                    )

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write()

    def _live(self, progress: Progress) -> None:
        counters = progress.dispatch
        total = progress.total
        self._set("rows", progress.finished - progress.failed, status="ok")
        self._set("rows", progress.failed, status="failed")
        if total is not None:
            self._set("rows", max(total - progress.finished, 0), status="pending")
        self._set("requests_sent", counters.sent)
        self._set("responses_429", counters.rate_limited)
        self._set("retries", counters.retries)
        self._set("cost_usd", counters.cost_usd)
        use = getattr(progress, "rate_use", None)
        if use is not None:
            self._set("limit_use_ratio", use)

    def _final(self, summary: RunSummary) -> None:
        with self._lock:
            self.progress = None  # the summary's figures from here on
            self._gauges["rows"].clear()
            for status, count in summary.by_status.items():
                self._set("rows", count, status=status)
            self._set("requests_sent", summary.sent)
            self._set("responses_429", summary.rate_limited)
            self._set("retries", summary.retries)
            self._set("cost_usd", summary.run_cost_usd or 0.0)
            self._set("run_duration_seconds", summary.wall_s)
            for kind in _TOKEN_KINDS:
                self._set("tokens", getattr(summary, f"{kind}_tokens"), kind=kind)

    def _gauge(self, name: str, doc: str, *extra: str) -> None:
        labels = (*self.labels, *extra)
        self._gauges[name] = Gauge(f"batchrun_{name}", doc, labels, registry=self.registry)

    def _set(self, name: str, value: float, **extra: str) -> None:
        self._gauges[name].labels(**self.labels, **extra).set(value)


def _last_success(path: Path, labels: dict[str, str]) -> float | None:
    """The last success an earlier run of this job wrote into the file, if any."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == _LAST_SUCCESS and _same(sample.labels, labels):
                    return float(sample.value)
    except ValueError:
        return None  # not a metrics file: it is replaced
    return None


def _same(found: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(found.get(key) == value for key, value in labels.items())
