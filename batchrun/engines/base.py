"""What every engine shares: preparing a run, its options, API key, budget, metadata,
summary and exit code.

The engines are peers on ``Run``: ``local.LocalRun`` (one process) and ``ray.engine.RayRun``
(a Ray cluster) each implement ``execute``; both answer rows with ``pipeline.Pipeline``
and write the output with ``output.table``. ``batchrun._runner`` picks one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from batchrun._errors import JobError, add_secret
from batchrun._version import __version__
from batchrun.engines.pipeline import Progress
from batchrun.engines.reason import Outcome, exit_reason
from batchrun.io.input import InputTable, open_input, validate_keys
from batchrun.job.config import Job
from batchrun.output.empty import empty_columns
from batchrun.output.table import (
    BatchHook,
    Lookup,
    OutputStats,
    check_columns,
    check_replaceable,
    write_output,
)
from batchrun.send.budget import Budget
from batchrun.send.dispatch import Dispatcher
from batchrun.send.requests import RequestBuilder, Selector
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.jobstore import ray_dir
from batchrun.store.keptlimits import KeptLimits
from batchrun.store.origin import EMULATED, endpoint_of

__all__ = [
    "EMULATOR_KEY",
    "EXIT_BUDGET",
    "EXIT_FAILED_ROWS",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "Run",
    "RunOptions",
    "RunSummary",
    "budget_for",
    "claim_endpoint",
    "emulated_job",
    "learned_limits_kept",
    "prepare",
    "resolve_api_key",
    "shard_of",
]

log = logging.getLogger("batchrun")

EXIT_OK, EXIT_FAILED_ROWS, EXIT_BUDGET, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 3, 4, 130
EMULATOR_KEY = "sk-emulator-demo"


@dataclass(frozen=True)
class RunOptions:
    """How this run treats the checkpoint and which rows it takes."""

    fresh: bool = False
    retry_failed: bool = False
    limit: int | None = None
    shard: tuple[int, int] | None = None
    emulate: bool = False
    base_url: str | None = None
    api_key: str | None = None
    engine: str = "local"  # "local" | "ray" (batchrun[ray]; see batchrun.engines.ray.engine)
    ray_address: str | None = None  # None: start a local Ray instance
    ray_workers: int | None = None  # None: one per CPU of the Ray cluster
    overwrite: bool = False  # replace an output.path file that is not this job's output
    variant: str | None = None  # --variant NAME: run only that one of the job's [[variants]]
    endpoint_moved: bool = False  # the checkpoint's answers came from this API, elsewhere


@dataclass
class RunSummary:
    """What a run did; ``exit_code`` follows the exit-code table."""

    job: str
    output_path: str
    rows: int
    by_status: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float | None  # what the output's answers cost in all (every run)
    sent: int
    reused_from_checkpoint: int
    dedupe_saved_requests: int
    dedupe_saved_usd: float
    retries: int
    rate_limited: int
    wall_s: float
    stopped: str | None
    exit_code: int
    synthetic: bool = False  # an emulated run (--emulate)
    error: str | None = None
    # What this run spent: its charges, at the real cost or (no usage came back) the
    # worst case, as the budget counts them. None for an unpriced model.
    run_cost_usd: float | None = None
    # Parsed columns null in more than a tenth of the ok rows, one line each.
    empty_columns: list[str] = field(default_factory=list)
    synthetic_rows: int = 0  # rows whose answer came from batchrun's emulator
    # The exit code in words (``engines.reason``), and the failed rows by error_type.
    exit_reason: str = ""
    by_error_type: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _money(self) -> str:
        if self.cost_usd is None and self.run_cost_usd is None:
            return "cost unpriced (no [pricing] for the model)"
        return (
            f"this run spent {_usd(self.run_cost_usd)},"
            f" the output's answers cost {_usd(self.cost_usd)} in all"
        )

    def render(self) -> str:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(self.by_status.items()) if n)
        lines = [
            f"{self.job}: {self.rows} rows ({statuses or 'none'}) -> {self.output_path}",
            f"  sent {self.sent} requests ({self.retries} retries,"
            f" {self.rate_limited} rate-limited),"
            f" {self.reused_from_checkpoint} rows from the checkpoint,"
            f" dedupe saved {self.dedupe_saved_requests} requests (${self.dedupe_saved_usd:.4f})",
            f"  tokens: {self.prompt_tokens} prompt ({self.cached_tokens} cached),"
            f" {self.completion_tokens} completion ({self.reasoning_tokens} reasoning);"
            f" {self._money()}; {self.wall_s:.1f}s",
        ]
        if self.stopped:
            lines.append(f"  stopped: {_STOP_REASONS[self.stopped]}")
        lines.extend(f"  warning: {line}" for line in self.empty_columns)
        if self.synthetic:
            lines.append("  EMULATED RUN: every answer in this output is synthetic.")
        elif self.synthetic_rows:
            answered = self.by_status.get("ok", 0) + self.by_status.get("error", 0)
            lines.append(
                f"  SYNTHETIC: {self.synthetic_rows} of the {answered} answered rows came from"
                " batchrun's emulator, not from a real API (output column synthetic)"
            )
        return "\n".join(lines)


_STOP_REASONS = {
    "budget": "limits.max_cost_usd reached; raise it and run again to continue",
    "fatal": "the API refused the job (see the error above); fix it and run the same command"
    " again: it sends every row not answered yet (no --retry-failed needed)",
    "interrupted": "interrupted; run the same command again to continue",
}


# --- preparing a run: everything that can fail before a request is sent -------------


def prepare(job: Job) -> tuple[InputTable, RequestBuilder]:
    """Every check a run makes before it sends anything (``run`` and ``plan`` share it).

    Raises ``InputError`` / ``JobError`` (exit 2): unreadable input, null or duplicate
    ids, a template naming a missing column, clashing output columns, a budget without
    a price.
    """
    table = open_input(job)
    validate_keys(table, job)
    builder = RequestBuilder(job, table.schema)
    check_columns(job, table.schema)
    if job.limits.max_cost_usd is not None and job.price is None:
        model = job.request.model
        raise JobError(
            f"limits.max_cost_usd: a budget needs a price; add [pricing.{model!r}]"
            " with input and output (USD per million tokens)"
        )
    if job.price is None:
        log.warning(
            "no [pricing] for model %r: cost_usd will be null",
            job.request.model,
            extra={"event": "no_pricing"},
        )
    return table, builder


def resolve_api_key(job: Job, given: str | None = None, *, why: str = "") -> str:
    """``given``, else the key in ``api.api_key_env``; a ``JobError`` (plus ``why``)
    when that variable is unset or empty."""
    name = job.api.api_key_env
    key = given or os.environ.get(name, "").strip()
    if not key:
        raise JobError(f"api.api_key_env: environment variable {name} is not set or empty{why}")
    add_secret(key)
    return key


def budget_for(job: Job, spent_usd: float) -> Budget | None:
    """The job's budget less what its checkpoint spent, or None without a cap."""
    if job.limits.max_cost_usd is None or job.price is None:
        return None
    return Budget(job.limits.max_cost_usd, job.price, spent_usd)


class KeepsLimits(Protocol):
    """Where learned limits are kept: a checkpoint, or the store over both engines' files."""

    def learned_limits(self) -> KeptLimits: ...

    def keep_learned_limits(self, rpm: int | None, tpm: int | None) -> None: ...


@contextmanager
def learned_limits_kept(ckpt: KeepsLimits, dispatcher: Dispatcher) -> Iterator[None]:
    """Start at the limits an earlier run learned; keep what this one learns."""
    kept = ckpt.learned_limits()
    dispatcher.learned.rpm, dispatcher.learned.tpm = kept.rpm, kept.tpm
    try:
        yield
    finally:
        ckpt.keep_learned_limits(dispatcher.learned.rpm, dispatcher.learned.tpm)


def claim_endpoint(
    ckpt: Checkpoint, job: Job, base_url: str | None, emulate: bool, moved: bool = False
) -> None:
    """Refuse (exit 2) a checkpoint whose answers came from another endpoint, before
    anything is sent (``store.origin``); ``--fresh`` and ``--endpoint-moved`` choose."""
    origin = EMULATED if emulate else endpoint_of(base_url or job.api.base_url)
    elsewhere = any(ray_dir(job).glob("*.sqlite"))
    ckpt.claim_endpoint(origin, moved=moved, elsewhere=elsewhere)


def emulated_job(job: Job) -> Job:
    """The job with a checkpoint of its own, so synthetic answers never pass for real ones."""
    path = job.output.checkpoint_path
    checkpoint = path.with_name(f"{path.stem}.emulated{path.suffix}")
    return replace(job, output=replace(job.output, checkpoint=str(checkpoint)))


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) a row key belongs to; stable across runs and machines."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


# --- the engines' base ----------------------------------------------------------------


class Run:
    """The state of one run of a job; an engine's ``execute`` is the whole procedure."""

    def __init__(
        self, job: Job, options: RunOptions, progress: Callable[[Progress], None] | None
    ) -> None:
        self.job = job
        self.options = options
        self.on_progress = progress
        self.progress = Progress()
        self.stopped: str | None = None
        self.fatal_message: str | None = None
        self.has_output = False  # the job's own output is at output.path (see _prepare)
        self.started = time.monotonic()

    def execute(self) -> RunSummary:
        raise NotImplementedError

    def _prepare(self) -> tuple[InputTable, RequestBuilder]:
        """``prepare``, and refuse to replace a file that is not this job's output."""
        prepared = prepare(self.job)
        self.has_output = check_replaceable(self.job, overwrite=self.options.overwrite)
        return prepared

    def _claim_endpoint(self, ckpt: Checkpoint) -> None:
        options = self.options
        claim_endpoint(ckpt, self.job, options.base_url, options.emulate, options.endpoint_moved)

    def _api_key(self) -> str:
        return resolve_api_key(self.job, self.options.api_key)

    def _log_started(self) -> None:
        """Once the run lock is held: every check that exits 2 has passed."""
        job = self.job
        log.info(
            "run of %s started (pid %d, %s engine): %s -> %s",
            *(job.name, os.getpid(), self.options.engine, job.input.path, job.output.path),
            extra={"event": "run_started", "job": job.name, "output": job.output.path},
        )

    def _total(self, table: InputTable) -> int | None:
        if self.options.shard is not None:
            return None
        total = table.count_rows()
        return min(total, self.options.limit) if self.options.limit else total

    def _selector(self) -> Selector | None:
        """The rows ``--shard`` and ``--limit`` take, batch by batch (None: every row)."""
        shard, limit = self.options.shard, self.options.limit
        if shard is None and limit is None:
            return None
        taken = 0

        def select(keys: list[str]) -> list[bool]:
            nonlocal taken
            mask = []
            for key in keys:
                keep = shard is None or shard_of(key, shard[1]) == shard[0]
                keep = keep and (limit is None or taken < limit)
                taken += keep
                mask.append(keep)
            return mask

        return select

    # --- output and summary -----------------------------------------------------

    def _write_output(
        self,
        table: InputTable,
        builder: RequestBuilder,
        lookup: Lookup,
        on_batch: BatchHook | None = None,
        footer: Callable[[], Mapping[str, str]] | None = None,
    ) -> OutputStats:
        """The output from the input and the answers ``lookup`` finds (both engines)."""
        return write_output(
            *(self.job, table, builder, lookup, self._metadata()),
            select=self._selector(),
            on_batch=on_batch,
            footer=footer,
            overwrite=self.options.overwrite,
        )

    def _metadata(self) -> dict[str, str]:
        job = self.job
        pricing = {model: asdict(price) for model, price in job.pricing.items()}
        counters = self.progress.dispatch
        run = {
            "sent": counters.sent,
            "retries": counters.retries,
            "rate_limited": counters.rate_limited,
            "reused_from_checkpoint": self.progress.reused,
            "deduped": self.progress.deduped,
            "stopped": self.stopped,
            "wall_s": round(time.monotonic() - self.started, 3),
            "synthetic": self.options.emulate,
            "run_cost_usd": self._run_cost(),
        }
        return {
            "batchrun.job": job.name,
            "batchrun.config_hash": job.config_hash,
            "batchrun.pricing": json.dumps(pricing, sort_keys=True),
            "batchrun.version": __version__,
            "batchrun.prefix": job.output.prefix,
            "batchrun.summary": json.dumps(run, sort_keys=True),
        }

    def _run_cost(self) -> float | None:
        return None if self.job.price is None else self.progress.dispatch.cost_usd

    def _summary(self, stats: OutputStats) -> RunSummary:
        by_status = dict(stats.by_status)
        failed = by_status.get("error", 0) + by_status.get("invalid", 0)
        counters = self.progress.dispatch
        if stats.synthetic_rows and not self.options.emulate:
            log.warning(
                "%d rows of %s hold synthetic answers from batchrun's emulator (column synthetic)",
                stats.synthetic_rows,
                stats.path,
                extra={"event": "synthetic_answers", "rows": stats.synthetic_rows},
            )
        exit_code = _exit_code(self.stopped, failed, self.job.limits.max_failed_rows)
        signalled = getattr(self, "signalled", None)
        outcome = Outcome(
            exit_code=exit_code,
            stopped=self.stopped,
            rows=sum(by_status.values()),
            by_status=by_status,
            by_error_type=dict(stats.by_error_type),
            max_failed_rows=self.job.limits.max_failed_rows,
            cut_off=stats.cut_off,
            max_completion_tokens=self.job.request.max_completion_tokens,
            fatal=self.fatal_message,
            max_cost_usd=self.job.limits.max_cost_usd,
            run_cost_usd=self._run_cost(),
            signal=signalled[0] if signalled else None,
        )
        return RunSummary(
            job=self.job.name,
            output_path=str(stats.path),
            rows=sum(by_status.values()),
            by_status=by_status,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            cached_tokens=stats.cached_tokens,
            reasoning_tokens=stats.reasoning_tokens,
            cost_usd=stats.cost_usd,
            run_cost_usd=self._run_cost(),
            sent=counters.sent,
            reused_from_checkpoint=self.progress.reused,
            dedupe_saved_requests=stats.shared_rows,
            dedupe_saved_usd=stats.shared_cost_usd,
            retries=counters.retries,
            rate_limited=counters.rate_limited,
            wall_s=round(time.monotonic() - self.started, 3),
            stopped=self.stopped,
            exit_code=exit_code,
            synthetic=self.options.emulate,
            synthetic_rows=stats.synthetic_rows,
            error=self.fatal_message,
            empty_columns=empty_columns(stats.null_counts, by_status.get("ok", 0)),
            exit_reason=exit_reason(outcome),
            by_error_type=dict(stats.by_error_type),
        )


def _usd(amount: float | None) -> str:
    return "unpriced" if amount is None else f"${amount:.4f}"


def run_exit_code(stopped: str | None, failed: int, max_failed: int) -> int:
    """The exit code of a run that stopped so (or not) with ``failed`` rows."""
    return _exit_code(stopped, failed, max_failed)


def _exit_code(stopped: str | None, failed: int, max_failed: int) -> int:
    if stopped == "interrupted":
        return EXIT_INTERRUPTED
    if stopped == "fatal":
        return EXIT_FATAL
    if stopped == "budget":
        return EXIT_BUDGET
    return EXIT_FAILED_ROWS if failed > max_failed else EXIT_OK
