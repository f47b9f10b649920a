"""The pipeline core every engine runs: rows -> requests -> dispatcher -> checkpoint.

One anyio task group of stages joined by bounded memory streams: the producer takes
batches of items and skips rows the checkpoint (or this run) already answered, the
dispatcher sends the rest, each answer is parsed on its way into the checkpoint
writer's stream (``_ParsingSendStream``: a stage without a task of its own), and the
checkpoint writer, the only task that writes, commits them.

The local engine feeds it every batch of the input, the Ray engine one batch per call,
``plan --pilot`` one batch of sampled requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrun._types import Request, RequestResult, Result
from batchrun.job.config import Job
from batchrun.output.table import parse_status
from batchrun.send.dispatch import Counters, Dispatcher, DispatchOutcome
from batchrun.store.intents import IntentLog

__all__ = ["Pipeline", "Progress", "Store"]


@dataclass
class Progress:
    """What a progress display shows; updated by the pipeline as rows finish.

    ``finished`` counts every row of the run that is done, however (answered now, from
    the checkpoint, shared with an identical row, or invalid); ``dispatch`` holds the
    dispatcher's own counts of what it sent (``dispatch.rows_sent``: rows it finished).
    """

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

    @property
    def paused(self) -> tuple[float, str] | None:
        return self.dispatch.paused


class Store(Protocol):
    """What ``Pipeline`` needs of a checkpoint (``Checkpoint``, or the Ray engine's
    per-worker view over several files)."""

    def answered(self, fingerprints: Sequence[str], *, include_failed: bool = True) -> set[str]: ...

    async def write_results(
        self,
        results: ObjectReceiveStream[RequestResult],
        on_commit: Callable[[list[str]], None] | None = None,
        intents: IntentLog | None = None,
    ) -> None: ...


class Pipeline:
    """Answers batches of items: skips what the checkpoint holds, dispatches the
    rest, parses each answer (the dispatcher priced it), and commits it through the one
    writer task.

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
        ck_send, ck_recv = anyio.create_memory_object_stream[RequestResult](1024)
        results = _ParsingSendStream(self, ck_send)
        intents = IntentLog()  # write-ahead spend: the writer commits each attempt first
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.ckpt.write_results, ck_recv, self._on_commit, intents)
            async with anyio.create_task_group() as feed, req_recv, results:
                self._producing, self._requests = anyio.CancelScope(), req_recv
                feed.start_soon(self._produce, batches, req_send)
                self.outcome = outcome = await self.dispatcher.run(req_recv, results, intents)
                feed.cancel_scope.cancel()
        return outcome

    async def _produce(
        self, batches: Iterable[list[Request | Result]], send: MemoryObjectSendStream[Request]
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

    def parsed(self, item: RequestResult) -> RequestResult:
        """An answer as the checkpoint keeps it: parsed (``parse_error``); the dispatcher
        priced it already."""
        request, result = item
        result = parse_status(self.job, result)
        if self.retry_failed and result.status == "error":
            self.failed_again.add(request.fingerprint)
        return request, result

    def count(self, item: RequestResult) -> None:
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


class _ParsingSendStream(ObjectSendStream[RequestResult]):
    """The dispatcher's result stream: each answer is parsed on its way into the
    checkpoint writer's stream (a stage without a task or a hop of its own)."""

    def __init__(self, pipeline: Pipeline, checkpoint: MemoryObjectSendStream[RequestResult]):
        self._pipeline = pipeline
        self._checkpoint = checkpoint

    def send_nowait(self, item: RequestResult) -> None:
        finished = self._pipeline.parsed(item)
        self._checkpoint.send_nowait(finished)  # WouldBlock: the dispatcher sends it later
        self._pipeline.count(finished)

    async def send(self, item: RequestResult) -> None:
        finished = self._pipeline.parsed(item)
        await self._checkpoint.send(finished)
        self._pipeline.count(finished)

    async def aclose(self) -> None:
        await self._checkpoint.aclose()
