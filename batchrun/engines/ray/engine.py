"""The Ray engine: one job across a Ray cluster, on batchrun's own per-batch core.

``batchrun run JOB --engine ray`` reads the input with ``ray.data`` and answers it in
``map_batches`` by a pool of worker actors. Each worker runs the local engine's
``RequestBuilder`` + ``Pipeline`` + ``Dispatcher`` on one batch at a time (same request
building, dispatch, retries, parsing and cost), and returns the batch's output rows,
which the driver streams in input order into one Parquet file, as the local engine does.

Global limits. One small ``Coordinator`` actor (``batchrun.engines.ray.coordinator``) holds what the
workers share (the rules are in ``batchrun.engines.ray.shares``, plain classes tested without Ray):

- the job's ``requests_per_minute`` and ``tokens_per_minute``: every send of every
  worker is admitted on one log (``GlobalPace``), so they hold in every window for any
  number of workers, and a busy worker uses what idle ones do not;
- ``concurrency``: leased to workers batch by batch (``Slots``); a worker may get none
  and wait;
- limits learned from the API's headers: admitted on the same log as configured ones
  (a worker's admission call carries what its answers stated);
- the 429 pause: a worker that must pause pushes "resume at" (wall clock) to it, and
  every worker's gate reads it at most ``GATE_REFRESH_S`` old before each send;
- the budget: ``max_cost_usd`` minus what every run of the job spent, leased to workers
  in slices (``BudgetPool``), given back when another worker waits for money and after
  each batch; the job stops on money only when nothing is leased and the rest cannot
  pay for one request;
- the stop (budget or fatal answer), counters and per-batch output counts;
- which batch is sending each fingerprint (``batchrun.engines.ray.claims``): identical requests
  on two workers are sent once.

Resume. Each worker writes its own SQLite checkpoint in ``<checkpoint>.ray/`` (on a
filesystem every node shares) and looks answers up in all of them, earlier runs'
included, and in the local engine's checkpoint, read-only (``batchrun.store.jobstore``: the
local engine and ``plan`` read them all too). The driver holds the job's run lock (the
local checkpoint's), so a second run of the job refuses to start.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa

from batchrun._errors import FatalApiError, JobError
from batchrun._types import Request, Result
from batchrun.engines.base import Run, RunSummary
from batchrun.engines.loop import EVENT_LOOP
from batchrun.engines.pipeline import Pipeline, Progress
from batchrun.engines.ray.claims import split_claimed, unique_fingerprints
from batchrun.engines.ray.coordinator import ROW_COUNTS, SEND_COUNTS, Coordinator, Totals
from batchrun.engines.ray.data import in_shard, is_small, read_here, read_input
from batchrun.engines.ray.shares import (
    Call,
    LeasedBudget,
    SharedPacer,
)
from batchrun.engines.ray.start import StartMarks, import_ray, process_started, ray_session
from batchrun.engines.ray.stop import WATCH_S, DriverSignals, log_stopped, run_watched
from batchrun.io.input import InputTable, conform, row_keys
from batchrun.job.config import Job
from batchrun.output.check import answer_check
from batchrun.output.table import (
    OutputStats,
    output_batch,
    output_location,
    output_schema,
    stats_metadata,
    write_batches,
)
from batchrun.send.dispatch import Dispatcher
from batchrun.send.ratelimit import PAUSE_CAP_S, Pacer, PauseGate
from batchrun.send.requests import RequestBuilder
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.jobstore import JobStore, budget_price, clear_ray_dir, ray_dir

log = logging.getLogger("batchrun")

BATCH_ROWS = 1024
"""Rows per ``map_batches`` call: the unit of work a worker takes (and Ray retries)."""
WORKER_CPUS = 0.25
"""CPUs a worker reserves: it mostly waits on the API, so several share a core."""
GATE_REFRESH_S = 0.25
"""Longest a worker goes without reading the shared 429 pause before a send."""
ClusterStore = JobStore  # the name earlier code and tests use


# --- the driver ---------------------------------------------------------------------


class RayRun(Run):
    """One run on Ray: the local run's checks, summary and metadata; Ray's dispatch."""

    signalled: tuple[str, int, int] | None = None  # (signal, on the wire, abandoned)

    def execute(self) -> RunSummary:
        self.marks = StartMarks()  # where the start-up goes: logged at the end
        self.marks.mark("run began")
        ray = import_ray()
        self.marks.mark("Ray imported")
        self._require_id_column()
        table, builder = self._prepare()
        api_key = self._api_key()
        ckpt_path = self.job.output.checkpoint_path
        with Checkpoint.open(
            ckpt_path, job_name=self.job.name, fresh=self.options.fresh, has_output=self.has_output
        ) as ckpt:
            self._log_started()
            store = ray_dir(self.job)
            if self.options.fresh:
                clear_ray_dir(self.job)  # under the run lock, as the local file is dropped
            self._claim_endpoint(ckpt)
            with JobStore(ckpt, store, self.job.name, price=budget_price(self.job)) as every:
                spent = every.spent_usd()  # both engines' spend, earlier runs included
            self.progress.total = self._total(table)
            try:
                with ray_session(self.options.ray_address):
                    self.marks.mark("Ray ready")
                    stats = self._run_on_ray(ray, table, api_key, spent)
            except KeyboardInterrupt:  # SIGINT, or SIGTERM through the CLI
                self.stopped = "interrupted"
                stats = self._write_saved(table, builder, ckpt, store)
        log_stopped(self.signalled)
        self._log_start()
        return self._summary(stats)

    def _log_start(self) -> None:
        origin = process_started() or min(self.marks.at["run began"])
        log.info(
            "Ray start-up, seconds after the driver started: %s",
            self.marks.line(origin),
            extra={"event": "ray_started"},
        )

    def _write_saved(
        self, table: InputTable, builder: RequestBuilder, ckpt: Checkpoint, store: Path
    ) -> OutputStats:
        """The output from what the workers saved, as the local engine writes it: answers
        from every checkpoint of the job, unfinished rows as pending."""
        log.warning(
            "interrupted: writing %s from the answers saved so far (interrupt again to skip"
            " it: every answer is in the checkpoints)",
            self.job.output.path,
            extra={"event": "writing_pending"},
        )
        saved = ClusterStore(ckpt, store, self.job.name)
        try:
            return self._write_output(table, builder, saved.lookup)
        finally:
            saved.close_readers()

    def _require_id_column(self) -> None:
        if self.job.input.id_column is None:
            raise JobError(
                "input.id_column: --engine ray needs an id column (Ray batches carry no"
                " row position); name a column with a unique id per row"
            )

    def _run_on_ray(self, ray: Any, table: InputTable, api_key: str, spent: float) -> OutputStats:
        workers = self.options.ray_workers or _cluster_cpus(ray)
        coordinator = (
            ray.remote(num_cpus=0)(Coordinator)
            .options(scheduling_strategy=_on_this_node(ray))
            .remote(workers, self._budget_left(spent), self.job.limits)
        )
        worker = _WorkerSpec(
            job=self.job,
            api_key=api_key,
            base_url=self.options.base_url,
            schema=table.schema,
            # Absolute: workers of a cluster joined by address run in other directories.
            store=str(ray_dir(self.job).resolve()),
            also=(str(self.job.output.checkpoint_path.resolve()),),
            run_id=f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}",
            retry_failed=self.options.retry_failed,
        )
        ds = self._dataset(ray, table).map_batches(
            _Worker,
            fn_constructor_kwargs={"spec": worker, "coordinator": coordinator},
            batch_size=BATCH_ROWS,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=WORKER_CPUS,
        )
        log.info(
            "Ray engine: %d workers sharing the job's limits",
            workers,
            extra={"event": "ray_workers", "workers": workers},
        )
        self.marks.mark("dataset planned")
        with DriverSignals(self, coordinator):  # a signal: stop sending, save, then stop Ray
            return self._write(ray, ds, coordinator, table.schema)

    def _budget_left(self, spent: float) -> float | None:
        limit = self.job.limits.max_cost_usd
        if limit is None or self.job.price is None:
            return None
        return max(limit - spent, 0.0)

    def _dataset(self, ray: Any, table: InputTable) -> Any:
        job, shard = self.job, self.options.shard
        if is_small(table):
            return read_here(ray, table, job, shard, self.options.limit, BATCH_ROWS)
        ds = read_input(ray, table)
        if shard is not None:
            ds = ds.map_batches(
                in_shard, fn_kwargs={"job": job, "shard": shard}, batch_format="pyarrow"
            )
        if self.options.limit is not None:
            ds = ds.limit(self.options.limit)
        # Spread the rows over the workers whatever the files' blocks are like.
        return ds.repartition(target_num_rows_per_block=BATCH_ROWS)

    def _write(self, ray: Any, ds: Any, coordinator: Any, schema: pa.Schema) -> OutputStats:
        path = output_location(self.job)
        stats = OutputStats(path=path, cost_usd=None if self.job.price is None else 0.0)
        out_schema = output_schema(self.job, schema)
        metadata = self._metadata()
        del metadata["batchrun.summary"]  # known at the end: see footer

        def batches() -> Iterator[pa.RecordBatch]:
            shown = 0.0
            for part in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                if "first rows back" not in self.marks.at:
                    self.marks.mark("first rows back")
                for batch in part.to_batches():
                    if batch.num_rows:
                        yield batch
                if self.on_progress is not None and time.monotonic() - shown >= 1.0:
                    shown = time.monotonic()
                    self._collect(ray.get(coordinator.totals.remote()))
                    self.on_progress(self.progress)
            self._collect(ray.get(coordinator.totals.remote()), stats)

        def footer() -> dict[str, str]:
            return {"batchrun.summary": self._metadata()["batchrun.summary"]} | stats_metadata(
                stats
            )

        schema = out_schema.with_metadata(metadata)
        write_batches(path, schema, batches(), footer, overwrite=self.options.overwrite)
        return stats

    def _collect(self, totals: Totals, stats: OutputStats | None = None) -> None:
        """Take the workers' counts (and, at the end, output counts and the stop)."""
        progress, counters = self.progress, self.progress.dispatch
        for name, value in totals.counters.items():
            target = progress if name in ROW_COUNTS else counters
            setattr(target, name, value)
        counters.rpm_limit = self.job.limits.requests_per_minute
        if stats is None:
            return
        for batch in totals.batches:
            _merge(stats, batch)
        self.marks.update(totals.marks)
        self.stopped = self.stopped or totals.stopped
        self.fatal_message = totals.fatal_message


def _on_this_node(ray: Any) -> Any:
    """The driver's node: the coordinator lives and dies with the driver, never with a
    worker node the cluster may lose."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _cluster_cpus(ray: Any) -> int:
    return max(int(ray.cluster_resources().get("CPU", 1)), 1)


def _merge(stats: OutputStats, counted: dict[str, Any]) -> None:
    """Add one batch's ``OutputStats.to_dict()`` into ``stats``."""
    stats.rows += counted["rows"]
    stats.by_status.update(Counter(counted["by_status"]))
    stats.shared_rows += counted["shared_rows"]
    stats.shared_cost_usd += counted["shared_cost_usd"]
    stats.synthetic_rows += counted.get("synthetic_rows", 0)
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
        setattr(stats, name, getattr(stats, name) + counted[name])
    stats.reasoning_tokens += counted["reasoning_tokens"]
    if counted["cost_usd"] is not None:
        stats.cost_usd = (stats.cost_usd or 0.0) + counted["cost_usd"]


# --- shared state: the coordinator actor --------------------------------------------


class SharedGate(PauseGate):
    """A ``PauseGate`` whose pauses reach every worker through the coordinator."""

    def __init__(self, coordinator: Any) -> None:
        super().__init__()
        self._coordinator = coordinator
        self._synced = -math.inf

    def pause_for(self, seconds: float) -> float:
        extended = super().pause_for(seconds)
        if extended:
            self._coordinator.pause_until.remote(time.time() + min(seconds, PAUSE_CAP_S))
        return extended

    async def wait(self) -> None:
        if time.monotonic() - self._synced >= GATE_REFRESH_S:
            self._synced = time.monotonic()  # one read at a time; others use the last
            resume_at = await self._coordinator.resume_time.remote()
            PauseGate.pause_for(self, resume_at - time.time())
        await super().wait()


def _remote(coordinator: Any) -> Call:
    async def call(name: str, *args: Any) -> Any:
        return await getattr(coordinator, name).remote(*args)

    return call


class _SharedDispatcher(Dispatcher):
    """A worker's dispatcher: the job's configured limits admitted by the coordinator."""

    def __init__(self, job: Job, call: Call, **kwargs: Any) -> None:
        super().__init__(job, **kwargs)
        self._call = call
        self._shared: tuple[float, SharedPacer] | None = None

    def pacer(self) -> Pacer:
        # Kept across batches (the learned limits' pace carries over) while the share holds.
        if self._shared is None or self._shared[0] != self.share:
            limits = self.limits
            pacer = SharedPacer(
                self._call,
                limits.requests_per_minute,
                limits.tokens_per_minute,
                self.learned,
                share=self.share,
            )
            self._shared = (self.share, pacer)
        return self._shared[1]


# --- the workers --------------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerSpec:
    job: Job
    api_key: str
    base_url: str | None
    schema: pa.Schema
    store: str
    also: tuple[str, ...]
    run_id: str
    retry_failed: bool


class _Worker:
    """A Ray Data actor: answers one batch per call with the local engine's core."""

    def __init__(self, spec: _WorkerSpec, coordinator: Any) -> None:
        import ray

        self.ray, self.spec, self.coordinator, self.job = ray, spec, coordinator, spec.job
        coordinator.mark.remote("worker processes started", process_started())
        self.marked: set[str] = set()  # the steps of the start this worker has told
        # The actor's id: the same when Ray restarts it on another node after its node
        # was lost, so the coordinator frees what its last life held.
        actor = ray.get_runtime_context().get_actor_id() or uuid.uuid4().hex
        self.id = f"{spec.run_id}-{actor}"
        index = ray.get(coordinator.join.remote(self.id))
        self.life = f"{self.id}-{index}"
        own = Checkpoint.open(
            Path(spec.store) / f"worker-{spec.run_id}-{index}.sqlite", job_name=self.job.name
        )
        self.store = JobStore(own, Path(spec.store), self.job.name, [Path(p) for p in spec.also])
        self.call = call = _remote(coordinator)
        self.budget = None
        if self.job.limits.max_cost_usd is not None and self.job.price is not None:
            self.budget = LeasedBudget(self.job.price, call, self.id)
        self.progress = Progress()
        self.dispatcher = _SharedDispatcher(
            self.job,
            call,
            api_key=spec.api_key,
            base_url=spec.base_url,
            budget=self.budget,
            counters=self.progress.dispatch,
            gate=SharedGate(coordinator),
            check=answer_check(self.job),
        )
        self.pipeline = Pipeline(
            self.job,
            self.store,
            self.dispatcher,
            retry_failed=spec.retry_failed,
            progress=self.progress,
        )
        self.builder = RequestBuilder(self.job, spec.schema)
        self.out_schema = output_schema(self.job, spec.schema)
        self._mark("workers ready")

    def _mark(self, step: str) -> None:
        """Tell the coordinator when this worker first reached ``step`` (no wait)."""
        if step not in self.marked:
            self.marked.add(step)
            self.coordinator.mark.remote(step, time.time())

    def __call__(self, part: pa.Table) -> pa.Table:
        self._mark("first batch at each worker")
        batch = conform(part.combine_chunks().to_batches()[0], self.spec.schema)
        items = self.builder.build(batch, 0)
        keys = row_keys(batch, self.job, 0)
        name = f"{keys[0]}+{len(keys)}"  # the batch's, kept when Ray retries it elsewhere
        before = self._rows()
        divisor, stopped = self.ray.get(self.coordinator.state.remote())
        if stopped is None:
            self._answer_claimed(items, divisor, name)
        fingerprints = [item.fingerprint for item in items if isinstance(item, Request)]
        stats = OutputStats(path=output_location(self.job))
        out = output_batch(
            self.job, batch, items, self.store.lookup(fingerprints), self.out_schema, stats
        )
        rows = {k: v - before[k] for k, v in self._rows().items()}
        report = self.coordinator.report.remote(
            self.life, self._counters(), name, rows, stats.to_dict()
        )
        self.ray.get(report)  # before the driver can see this batch's rows
        return pa.Table.from_batches([out])

    def _answer_claimed(self, items: list[Request | Result], divisor: int, batch: str) -> None:
        """Send what no other batch is sending (``batchrun.engines.ray.claims``), then, once those
        are answered, what is still unanswered of the rest."""
        fingerprints = unique_fingerprints(items)
        claimed = self.coordinator.claim.remote(batch, fingerprints, self.id)
        now, later = split_claimed(items, self.ray.get(claimed))
        self._skip_failed_again(fingerprints)
        try:
            self._answer(now, divisor)
        finally:
            failed = [fp for fp in fingerprints if fp in self.pipeline.failed_again]
            release = self.coordinator.release.remote(batch, failed)
            self.ray.get(release)  # before waiting on others
        if later and self._wait_for_claims(batch, unique_fingerprints(later)):
            self._skip_failed_again(unique_fingerprints(later))
            self._answer(later, divisor)  # looked up in the store, sent only if unanswered

    def _skip_failed_again(self, fingerprints: list[str]) -> None:
        """``--retry-failed``: a request another batch sent in this run and saw fail
        again is not sent again (its answer is the one stored)."""
        if self.spec.retry_failed:
            failed = self.ray.get(self.coordinator.failed_again.remote(fingerprints))
            self.pipeline.failed_again.update(failed)

    def _wait_for_claims(self, batch: str, fingerprints: list[str]) -> bool:
        """Wait until other batches released ``fingerprints``; False if the run stopped."""
        while True:
            asked = self.coordinator.held.remote(batch, fingerprints, self.id, WATCH_S)
            held, stopped = self.ray.get(asked)
            if stopped is not None:
                return False
            if not held:
                return True

    def _answer(self, items: list[Request | Result], divisor: int) -> None:
        """Send the batch's unanswered rows with the slots leased for it."""
        slots = self._take_slots(sum(isinstance(item, Request) for item in items))
        if slots == 0:
            return  # the run stopped while this worker waited
        self._mark("first sends of each worker")
        self.dispatcher.share = 1 / divisor  # of a pace guessed from a bare 429
        self.dispatcher.limits = replace(self.job.limits, concurrency=slots)
        stop: tuple[str, str | None] | None = None
        try:
            outcome = anyio.run(self._run_batch, items, backend_options=EVENT_LOOP)
            stop = None if outcome.stopped is None else (outcome.stopped, None)
        except* FatalApiError as group:
            stop = ("fatal", str(_first(group)))
        finally:
            self.ray.get(self.coordinator.give_back_slots.remote(self.id))
        if stop is not None:
            self.ray.get(self.coordinator.stop.remote(*stop))

    async def _run_batch(self, items: list[Request | Result]) -> Any:
        try:
            return await run_watched(self.pipeline, items, self.call, self.id)
        finally:
            if self.budget is not None:
                with anyio.CancelScope(shield=True):
                    await self.budget.give_back()

    def _take_slots(self, requests: int) -> int:
        """Slots of ``concurrency`` for this batch: waits while others hold them all."""
        if requests == 0:
            return 1  # nothing to send: no slot needed
        want = min(self.job.limits.concurrency, requests)
        while True:  # each call waits up to WATCH_S for slots given back
            asked = self.coordinator.take_slots.remote(self.id, want, WATCH_S)
            slots, stopped = self.ray.get(asked)
            if slots or stopped is not None:
                return int(slots)

    def _counters(self) -> dict[str, float]:
        """This life's sends and spend, in all its batches."""
        return {name: getattr(self.progress.dispatch, name) for name in SEND_COUNTS}

    def _rows(self) -> dict[str, float]:
        """This life's row counts so far (a batch reports what it added)."""
        return {name: getattr(self.progress, name) for name in ROW_COUNTS}


def _first(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


__all__ = ["ClusterStore", "RayRun", "SharedGate", "import_ray", "ray_session", "read_input"]
