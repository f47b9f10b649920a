"""One run of a job: rows -> requests -> dispatcher -> checkpoint -> output -> summary.

The pipeline is one anyio task group of four stages joined by bounded memory
streams: the producer reads input batches and skips rows the checkpoint already
answered, the dispatcher sends, the finisher prices and parses each answer, and
the checkpoint writer (the only task that writes) commits them. The output is
written afterwards from the input and the checkpoint, so a killed run loses
nothing that was committed and a resumed run writes the same table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrun._budget import Budget
from batchrun._checkpoint import Checkpoint
from batchrun._config import Job
from batchrun._dispatch import EVENT_LOOP, Counters, Dispatcher, DispatchOutcome
from batchrun._errors import FatalApiError, JobError
from batchrun._input import InputTable, open_input, validate_keys
from batchrun._jobfile import load_job
from batchrun._output import Lookup, OutputStats, check_columns, parse_status, write_output
from batchrun._requests import RequestBuilder, built_batches
from batchrun._store import clear_ray_dir, local_store
from batchrun._types import Request, Result

log = logging.getLogger("batchrun")

EXIT_OK, EXIT_FAILED_ROWS, EXIT_BUDGET, EXIT_FATAL, EXIT_INTERRUPTED = 0, 1, 3, 4, 130
EMULATOR_KEY = "sk-emulator-demo"
SIGNAL_GRACE_S = 20.0
"""Longest wait for requests in flight after SIGINT/SIGTERM (under Kubernetes' 30 s)."""
COMMIT_GRACE_S = 5.0
"""After that, how long the checkpoint writer has to commit what came back."""
Finished = tuple[Request, Result]
Checkpointed = tuple[Request, Result]  # priced by the dispatcher, parsed by Pipeline.finish


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
    engine: str = "local"  # "local" | "ray" (batchrun[ray]; see batchrun._ray)
    ray_address: str | None = None  # None: start a local Ray instance
    ray_workers: int | None = None  # None: one per CPU of the Ray cluster


@dataclass
class Progress:
    """What a progress display shows; updated by the pipeline as rows finish."""

    total: int | None = None
    finished: int = 0
    failed: int = 0
    reused: int = 0
    deduped: int = 0
    dispatch: Counters = field(default_factory=Counters)

    @property
    def rate_limited(self) -> int:
        return self.dispatch.rate_limited

    @property
    def cost_usd(self) -> float:
        return self.dispatch.cost_usd

    @property
    def rpm_limit(self) -> float | None:
        return self.dispatch.rpm_limit

    @property
    def sent(self) -> int:
        return self.dispatch.sent


@dataclass
class RunSummary:
    """What a run did; ``exit_code`` follows SPEC's table."""

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
    synthetic: bool = False
    error: str | None = None
    # What this run spent: its charges, at the real cost or (no usage came back) the
    # worst case, as the budget counts them. None for an unpriced model.
    run_cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
            f" this run spent {_usd(self.run_cost_usd)}, the output's answers cost"
            f" {_usd(self.cost_usd)} in all; {self.wall_s:.1f}s",
        ]
        if self.stopped:
            lines.append(f"  stopped: {_STOP_REASONS[self.stopped]}")
        if self.synthetic:
            lines.append("  EMULATED RUN: every answer in this output is synthetic.")
        return "\n".join(lines)


_STOP_REASONS = {
    "budget": "limits.max_cost_usd reached; raise it and run again to continue",
    "fatal": "the API refused the job (see the error above); fix it and run again to continue",
    "interrupted": "interrupted; run the same command again to continue",
}


def run_job_file(
    path: str | Path,
    *,
    sets: Sequence[str] = (),
    variables: Sequence[str] = (),
    options: RunOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RunSummary:
    """Load a job file and run it."""
    job = load_job(path, sets=sets, variables=variables)
    return run_job(job, options or RunOptions(), progress)


def run_job(
    job: Job, options: RunOptions, progress: Callable[[Progress], None] | None = None
) -> RunSummary:
    """Run ``job`` to the end (or to a stop) and write its output."""
    if options.shard is not None:
        output = replace(job.output, path=shard_output_path(job.output.path, options.shard))
        job = replace(job, output=output)
    if not options.emulate:
        return _engine(options)(job, options, progress).execute()
    from batchrun._emulator import EmulatorProcess

    with EmulatorProcess() as emu:
        log.warning("EMULATED RUN on %s: every answer is synthetic", emu.base_url)
        emulated = replace(options, base_url=emu.base_url, api_key=EMULATOR_KEY)
        return _engine(options)(emulated_job(job), emulated, progress).execute()


def emulated_job(job: Job) -> Job:
    """The job with a checkpoint of its own, so synthetic answers never pass for real ones."""
    path = job.output.checkpoint_path
    checkpoint = path.with_name(f"{path.stem}.emulated{path.suffix}")
    return replace(job, output=replace(job.output, checkpoint=str(checkpoint)))


def _engine(options: RunOptions) -> type[_Run]:
    if options.engine == "ray":
        from batchrun._ray import RayRun

        return RayRun
    return _Run


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) a row key belongs to; stable across runs and machines."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


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
        log.warning("no [pricing] for model %r: cost_usd will be null", job.request.model)
    return table, builder


def shard_output_path(path: str, shard: tuple[int, int]) -> str:
    """``out/x.parquet`` -> ``out/x.shard-1-of-4.parquet``: each shard its own output.

    Shards of one job would otherwise replace each other's output file (and share
    one checkpoint lock); the checkpoint beside the output follows the new name.

    >>> shard_output_path("out/x.parquet", (1, 4))
    'out/x.shard-1-of-4.parquet'
    """
    out = Path(path)
    return str(out.with_name(f"{out.stem}.shard-{shard[0]}-of-{shard[1]}{out.suffix}"))


class _Run:
    """The state of one run; ``execute`` is the whole procedure as named steps."""

    def __init__(
        self, job: Job, options: RunOptions, progress: Callable[[Progress], None] | None
    ) -> None:
        self.job = job
        self.options = options
        self.on_progress = progress
        self.progress = Progress()
        self.stopped: str | None = None
        self.fatal_message: str | None = None
        self.started = time.monotonic()
        self.signalled: tuple[str, int] | None = None  # (signal name, requests on the wire)

    def execute(self) -> RunSummary:
        table, builder = self._prepare()
        api_key = self._api_key()
        with (
            Checkpoint.open(
                self.job.output.checkpoint_path, job_name=self.job.name, fresh=self.options.fresh
            ) as ckpt,
            local_store(ckpt, self.job) as store,
        ):
            if self.options.fresh:
                clear_ray_dir(self.job)  # one store for both engines: --fresh clears both
            self.ckpt = store  # answers and spend of both engines' files
            dispatcher = self._dispatcher(api_key)
            self.progress.total = self._total(table)
            kept = ckpt.learned_limits()  # start at the limits an earlier run learned
            dispatcher.learned.rpm, dispatcher.learned.tpm = kept.rpm, kept.tpm
            try:
                self._dispatch_all(table, builder, dispatcher)
            finally:
                ckpt.keep_learned_limits(dispatcher.learned.rpm, dispatcher.learned.tpm)
            if self.stopped == "interrupted":
                log.warning(
                    "writing %s with unfinished rows as pending (interrupt again to skip it:"
                    " every answer is in the checkpoint)",
                    self.job.output.path,
                )
            stats = self._write_output(table, builder, store.lookup)
        return self._summary(stats)

    def _write_output(
        self, table: InputTable, builder: RequestBuilder, lookup: Lookup
    ) -> OutputStats:
        """The output from the input and the answers ``lookup`` finds (both engines)."""
        return write_output(
            self.job, table, builder, lookup, self._metadata(), select=self._selector()
        )

    # --- preparation: everything that can fail before a request is sent -----

    def _prepare(self) -> tuple[InputTable, RequestBuilder]:
        return prepare(self.job)

    def _api_key(self) -> str:
        if self.options.api_key:
            return self.options.api_key
        name = self.job.api.api_key_env
        key = os.environ.get(name, "").strip()
        if not key:
            raise JobError(f"api.api_key_env: environment variable {name} is not set or empty")
        return key

    def _dispatcher(self, api_key: str) -> Dispatcher:
        budget = None
        if self.job.limits.max_cost_usd is not None and self.job.price is not None:
            budget = Budget(self.job.limits.max_cost_usd, self.job.price, self.ckpt.spent_usd())
        return Dispatcher(
            self.job,
            api_key=api_key,
            base_url=self.options.base_url,
            budget=budget,
            counters=self.progress.dispatch,
        )

    def _total(self, table: InputTable) -> int | None:
        if self.options.shard is not None:
            return None
        total = table.count_rows()
        return min(total, self.options.limit) if self.options.limit else total

    # --- row selection (--limit, --shard) ---------------------------------------

    def _selector(self) -> Callable[[list[str]], list[bool]] | None:
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

    def _selected_items(
        self, table: InputTable, builder: RequestBuilder
    ) -> Iterator[list[Request | Result]]:
        for _, items in built_batches(table, builder, select=self._selector()):
            if items:
                yield items

    # --- the async pipeline -----------------------------------------------------

    def _dispatch_all(
        self, table: InputTable, builder: RequestBuilder, dispatcher: Dispatcher
    ) -> None:
        pipeline = Pipeline(
            self.job,
            self.ckpt,
            dispatcher,
            retry_failed=self.options.retry_failed,
            progress=self.progress,
            on_progress=self.on_progress,
        )
        handlers = [(sig, signal.getsignal(sig)) for sig in (signal.SIGINT, signal.SIGTERM)]
        try:
            anyio.run(
                self._main,
                pipeline,
                self._selected_items(table, builder),
                backend_options=EVENT_LOOP,
            )
        except FatalApiError as exc:
            # The output is still written (unfinished rows as pending) before exit 4.
            log.error("%s", exc)
            self.stopped, self.fatal_message = "fatal", str(exc)
        finally:
            # asyncio resets the handlers it borrowed to the defaults, not to the caller's.
            for sig, handler in handlers:
                if handler is not None:
                    signal.signal(sig, handler)
        if self.stopped is None and pipeline.outcome is not None:
            self.stopped = pipeline.outcome.stopped
        self._log_stopped()

    async def _main(self, pipeline: Pipeline, batches: Iterable[list[Request | Result]]) -> None:
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._watch_signals, outer.cancel_scope, pipeline)
                await pipeline.run(batches)
                outer.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise _first_batchrun_error(group) from None

    async def _watch_signals(self, scope: anyio.CancelScope, pipeline: Pipeline) -> None:
        # The first signal sends nothing more but lets requests in flight finish: the API
        # bills them whether or not we wait, and a rerun would pay for them again. The
        # grace deadline cancels those sends, not the checkpoint writer, which still
        # commits every answer that came back. The second signal stops at once.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stopped == "interrupted":
                    log.warning("%s again: stopping now, saving what finished", name)
                    scope.cancel()
                    return
                grace = min(self.job.limits.timeout_s, SIGNAL_GRACE_S)
                self.stopped = "interrupted"
                on_the_wire = pipeline.stop_sending(grace)
                self.signalled = (name, on_the_wire)
                log.warning(
                    "%s: sending nothing more; waiting up to %.0f s for %d %s in flight"
                    " (signal again to stop at once)",
                    *(name, grace, on_the_wire, _requests_word(on_the_wire)),
                )
                # A backstop only: the sends end by the grace deadline, then the writer commits.
                scope.deadline = anyio.current_time() + grace + COMMIT_GRACE_S

    def _log_stopped(self) -> None:
        """After a signal, what became of the requests that were on the wire."""
        if self.signalled is None:
            return
        name, on_the_wire = self.signalled
        abandoned = self.progress.dispatch.abandoned
        log.warning(
            "%s: stopped; %d of %d %s in flight came back and %s saved, %d abandoned at the"
            " deadline (perhaps billed, sent again by a rerun)",
            *(name, on_the_wire - abandoned, on_the_wire, _requests_word(on_the_wire)),
            *("is" if on_the_wire - abandoned == 1 else "are", abandoned),
        )

    # --- output and summary -----------------------------------------------------

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
            "batchrun.version": _version(),
            "batchrun.prefix": job.output.prefix,
            "batchrun.summary": json.dumps(run, sort_keys=True),
        }

    def _run_cost(self) -> float | None:
        return None if self.job.price is None else self.progress.dispatch.cost_usd

    def _summary(self, stats: Any) -> RunSummary:
        by_status = dict(stats.by_status)
        failed = by_status.get("error", 0) + by_status.get("invalid", 0)
        counters = self.progress.dispatch
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
            exit_code=_exit_code(self.stopped, failed, self.job.limits.max_failed_rows),
            synthetic=self.options.emulate,
            error=self.fatal_message,
        )


class Store(Protocol):
    """What ``Pipeline`` needs of a checkpoint (``Checkpoint``, or the Ray engine's
    per-worker view over several files)."""

    def answered(self, fingerprints: Sequence[str], *, include_failed: bool = True) -> set[str]: ...

    async def write_results(
        self,
        results: ObjectReceiveStream[Checkpointed],
        on_commit: Callable[[list[str]], None] | None = None,
    ) -> None: ...


class Pipeline:
    """Answers batches of items: skips what the checkpoint holds, dispatches the
    rest, prices and parses each answer, and commits it through the one writer task.

    The local engine feeds it every batch of the input; the Ray engine feeds it one
    batch per call. Items are ``Request`` or (for rows never sent) invalid ``Result``.
    """

    def __init__(
        self,
        job: Job,
        checkpoint: Store,
        dispatcher: Dispatcher,
        *,
        retry_failed: bool = False,
        progress: Progress | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.job = job
        self.ckpt = checkpoint
        self.dispatcher = dispatcher
        self.retry_failed = retry_failed
        self.progress = progress or Progress()
        self.on_progress = on_progress
        self.in_flight: set[str] = set()
        # --retry-failed: requests that failed again in this run are not sent twice in it.
        self.failed_again: set[str] = set()
        self.outcome: DispatchOutcome | None = None
        self._producing: anyio.CancelScope | None = None
        self._requests: MemoryObjectReceiveStream[Request] | None = None

    async def run(self, batches: Iterable[list[Request | Result]]) -> DispatchOutcome:
        buffer = max(16, 2 * self.job.limits.concurrency)
        req_send, req_recv = anyio.create_memory_object_stream[Request](buffer)
        ck_send, ck_recv = anyio.create_memory_object_stream[Checkpointed](1024)
        results = _Finishing(self, ck_send)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.ckpt.write_results, ck_recv, self._on_commit)
            async with anyio.create_task_group() as feed, req_recv, results:
                self._producing, self._requests = anyio.CancelScope(), req_recv
                feed.start_soon(self._produce, batches, req_send)
                self.outcome = await self.dispatcher.run(req_recv, results)
                feed.cancel_scope.cancel()
        return self.outcome

    async def _produce(
        self, batches: Iterable[list[Request | Result]], send: ObjectSendStream[Request]
    ) -> None:
        async with send:
            with self._producing or anyio.CancelScope():
                for items in batches:
                    for request in self._to_send(items):
                        try:  # a loop turn only when the dispatcher is behind
                            send.send_nowait(request)
                        except anyio.WouldBlock:
                            await send.send(request)
                    # A resume can meet a million answered rows before its first new one:
                    # signals and answers still get a turn after every batch.
                    await anyio.lowlevel.checkpoint()

    def stop_sending(self, grace_s: float = math.inf) -> int:
        """Take no more rows, drop those queued and send nothing more; requests already
        on the wire get ``grace_s`` to come back and are committed, then ``run`` returns.

        Returns how many requests were on the wire."""
        on_the_wire = self.dispatcher.stop_sending(grace_s)
        if self._producing is not None:
            self._producing.cancel()
        self._drop_queued()
        return on_the_wire

    def _drop_queued(self) -> None:
        while self._requests is not None:
            try:
                self._requests.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return

    def _to_send(self, items: list[Request | Result]) -> list[Request]:
        """The batch's requests that neither the checkpoint nor this run has answered."""
        requests = [item for item in items if isinstance(item, Request)]
        invalid = len(items) - len(requests)
        # Snapshot in-flight before asking the checkpoint: a fingerprint leaves
        # in_flight only after its answer is committed, so it is seen in one or the other.
        in_flight = {
            r.fingerprint
            for r in requests
            if r.fingerprint in self.in_flight or r.fingerprint in self.failed_again
        }
        done = self.ckpt.answered(
            [r.fingerprint for r in requests if r.fingerprint not in in_flight],
            include_failed=not self.retry_failed,
        )
        fresh: list[Request] = []
        for request in requests:
            if request.fingerprint in done:
                self.progress.reused += 1
            elif request.fingerprint in in_flight or request.fingerprint in self.in_flight:
                # Sent (or failed again) in this run: its answer is shared, not re-bought.
                self.progress.deduped += 1
            else:
                self.in_flight.add(request.fingerprint)
                fresh.append(request)
        self.progress.finished += len(requests) - len(fresh) + invalid
        self.progress.failed += invalid
        self._report_progress()
        return fresh

    def finish(self, item: Finished) -> Checkpointed:
        """An answer as the checkpoint keeps it: parsed (``parse_error``); the dispatcher
        priced it already."""
        request, result = item
        result = parse_status(self.job, result)
        if self.retry_failed and result.status == "error":
            self.failed_again.add(request.fingerprint)
        return request, result

    def count(self, item: Checkpointed) -> None:
        if item[1].status == "pending":
            return  # a row abandoned by a stop: only its charges go to the checkpoint
        self.progress.finished += 1
        self.progress.failed += item[1].status != "ok"
        self._report_progress()

    def _on_commit(self, fingerprints: list[str]) -> None:
        self.in_flight.difference_update(fingerprints)

    def _report_progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)


class _Finishing(ObjectSendStream[Finished]):
    """The dispatcher's result stream: each answer is parsed and priced on its way
    into the checkpoint writer's stream (a stage without a task or a hop of its own)."""

    def __init__(self, pipeline: Pipeline, checkpoint: MemoryObjectSendStream[Checkpointed]):
        self._pipeline = pipeline
        self._checkpoint = checkpoint

    def send_nowait(self, item: Finished) -> None:
        finished = self._pipeline.finish(item)
        self._checkpoint.send_nowait(finished)  # WouldBlock: the dispatcher sends it later
        self._pipeline.count(finished)

    async def send(self, item: Finished) -> None:
        finished = self._pipeline.finish(item)
        await self._checkpoint.send(finished)
        self._pipeline.count(finished)

    async def aclose(self) -> None:
        await self._checkpoint.aclose()


def _requests_word(count: int) -> str:
    return "request" if count == 1 else "requests"


def _usd(amount: float | None) -> str:
    return "unpriced" if amount is None else f"${amount:.4f}"


def _exit_code(stopped: str | None, failed: int, max_failed: int) -> int:
    if stopped == "interrupted":
        return EXIT_INTERRUPTED
    if stopped == "fatal":
        return EXIT_FATAL
    if stopped == "budget":
        return EXIT_BUDGET
    return EXIT_FAILED_ROWS if failed > max_failed else EXIT_OK


def _first_batchrun_error(group: BaseExceptionGroup) -> BaseException:
    """Task groups wrap errors; a run surfaces the first one of ours (or the group)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_batchrun_error(exc)
        if isinstance(exc, FatalApiError | JobError):
            return exc
    return group


def _version() -> str:
    from batchrun import __version__

    return __version__


__all__ = [
    "Progress",
    "RunOptions",
    "RunSummary",
    "emulated_job",
    "prepare",
    "run_job",
    "run_job_file",
    "shard_of",
    "shard_output_path",
]
