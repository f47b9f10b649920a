"""The local engine: one job in this process, the pipeline fed every batch of the input.

    prepare -> checkpoint (run lock) -> Pipeline over the selected rows (signals watched)
        -> output from the input and the checkpoint -> summary

The output is written afterwards from the input and the checkpoint, so a killed run
loses nothing that was committed and a resumed run writes the same table.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Iterable, Iterator, Mapping, Sequence

import anyio
import pyarrow as pa

from batchrun._errors import FatalApiError
from batchrun._types import Answer, Request, Result
from batchrun.engines.base import Run, RunSummary, budget_for, learned_limits_kept
from batchrun.engines.loop import run_async
from batchrun.engines.pipeline import Pipeline
from batchrun.io.input import InputTable, row_keys
from batchrun.output.check import answer_check
from batchrun.output.table import Item, OutputStats, kept_output
from batchrun.send.dispatch import Dispatcher
from batchrun.send.requests import RequestBuilder, built_batches
from batchrun.store.batchdone import (
    WRITTEN_FROM_KEY,
    DoneBatch,
    batch_digest,
    output_state,
    request_key,
)
from batchrun.store.checkpoint import Checkpoint
from batchrun.store.jobstore import JobStore, clear_ray_dir, local_store, ray_dir

__all__ = ["COMMIT_GRACE_S", "SIGNAL_GRACE_S", "LocalRun"]

log = logging.getLogger("batchrun")

SIGNAL_GRACE_S = 20.0
"""Longest wait for requests in flight after SIGINT/SIGTERM (under Kubernetes' 30 s)."""
COMMIT_GRACE_S = 5.0
"""After that, how long the checkpoint writer has to commit what came back."""
BATCH_ROWS = 4096  # built_batches' and write_output's batch size: the same batches
_TURN_EVERY = 64  # recorded batches skipped (~1 ms each) between the pipeline's turns


class LocalRun(Run):
    """One run in this process; ``execute`` is the whole procedure as named steps."""

    signalled: tuple[str, int] | None = None  # (signal name, requests on the wire)
    # The digests of the input batches, when every one was skipped as done (else None).
    _skipped_all: list[bytes] | None = None

    def execute(self) -> RunSummary:
        table, builder = self._prepare()
        api_key = self._api_key()
        with (
            Checkpoint.open(
                self.job.output.checkpoint_path,
                job_name=self.job.name,
                fresh=self.options.fresh,
                has_output=self.has_output,
            ) as own,
            local_store(own, self.job) as ckpt,  # answers and spend of both engines' files
        ):
            self._log_started()
            if self.options.fresh:
                clear_ray_dir(self.job)  # one store for both engines: --fresh clears both
            self._claim_endpoint(own)
            dispatcher = Dispatcher(
                self.job,
                api_key=api_key,
                base_url=self.options.base_url,
                budget=budget_for(self.job, ckpt.spent_usd()),
                counters=self.progress.dispatch,
                check=answer_check(self.job),
            )
            self.progress.total = self._total(table)
            with learned_limits_kept(ckpt, dispatcher):
                self._dispatch_all(ckpt, self._items(table, builder, ckpt), dispatcher)
            if self.stopped == "interrupted":
                log.warning(
                    "writing %s with unfinished rows as pending (interrupt again to skip it:"
                    " every answer is in the checkpoint)",
                    self.job.output.path,
                    extra={"event": "writing_pending"},
                )
            commits = ckpt.commits()
            stats = self._kept_output(commits)
            if stats is None:
                done = _DoneBatches(request_key(self.job))
                whole = self._selector() is None
                footer = functools.partial(self._written_from, done, commits)
                stats = self._write_output(
                    table, builder, ckpt.lookup, done if whole else None, footer if whole else None
                )
                ckpt.record_done_batches(done.found)
        return self._summary(stats)

    # --- keeping an output nothing changed -------------------------------------------

    def _kept_output(self, commits: int) -> OutputStats | None:
        """The existing output's counts, when this run sent nothing, skipped every input
        batch as done, and the output was written from exactly those batches under this
        config (``batchrun.written_from``): rewriting it would give the same rows."""
        if self._skipped_all is None or self.stopped is not None:
            return None
        if self.progress.dispatch.sent or any(ray_dir(self.job).glob("*.sqlite")):
            return None  # new answers, or a Ray worker's file the done batches do not cover
        state = output_state(
            self.job, self._skipped_all, synthetic=self.options.emulate, commits=commits
        )
        stats = kept_output(self.job, WRITTEN_FROM_KEY, state)
        if stats is not None:
            log.info(
                "%s is up to date (every row done, nothing changed): kept",
                stats.path,
                extra={"event": "output_kept"},
            )
        return stats

    def _written_from(self, done: _DoneBatches, commits: int) -> dict[str, str]:
        """The output's ``batchrun.written_from`` when every batch it wrote was done."""
        if len(done.found) != done.batches:
            return {}
        digests = [batch.digest for batch in done.found]
        state = output_state(self.job, digests, synthetic=self.options.emulate, commits=commits)
        return {WRITTEN_FROM_KEY: state}

    def _items(
        self, table: InputTable, builder: RequestBuilder, ckpt: JobStore
    ) -> Iterator[list[Request | Result]]:
        """Every row's item, batch by batch; batches recorded as done (``store.batchdone``)
        are counted and skipped without building their rows, and a built batch the
        checkpoint has every answer for is recorded as done on the spot (``_answered``)."""
        if self._selector() is not None:  # --limit, --shard: batches are never whole
            yield from self._selected_items(table, builder)
            return
        start, include_failed, job_key = 0, not self.options.retry_failed, request_key(self.job)
        skipped: list[bytes] | None = []
        for batch in table.batches(BATCH_ROWS):
            first, start = start, start + batch.num_rows
            digest = batch_digest(batch, first, job_key)
            done = ckpt.done_batch(digest, include_failed=include_failed)
            if done is not None and skipped is not None:
                skipped.append(digest)
            elif done is None:
                skipped = None  # this batch is built: the output is written afresh
                keys = row_keys(batch, self.job, first)
                if (done := self._answered(ckpt, digest, builder, batch, first, keys)) is None:
                    if items := builder.build(batch, first, keys):
                        yield items
                    continue
            self.progress.reused += done.requests
            self.progress.finished += batch.num_rows
            self.progress.failed += done.invalid
            if skipped is None or len(skipped) % _TURN_EVERY == 0:
                yield []  # nothing to send, but the pipeline's turn: signals, progress
        self._skipped_all = skipped

    def _answered(
        self,
        ckpt: JobStore,
        digest: bytes,
        builder: RequestBuilder,
        batch: pa.RecordBatch,
        first: int,
        keys: list[str],
    ) -> DoneBatch | None:
        """The batch as done, recorded, when the checkpoint has every request's answer
        (what the output pass would record): after a kill -9, before any output pass,
        the next resume then skips it unbuilt. None when a request is unanswered (or,
        with ``--retry-failed``, failed); the pipeline then sends what is missing."""
        include_failed = not self.options.retry_failed
        end = batch.num_rows - 1
        last = builder.build(batch.slice(end), first + end, keys[end:]) if keys else []
        probe = [item.fingerprint for item in last if isinstance(item, Request)]
        if probe and not ckpt.answered(probe, include_failed=include_failed):
            return None  # one row built and looked up: a batch not yet sent costs no more
        found = builder.fingerprints(batch, first, keys)
        fingerprints = [fp for fp in found if fp is not None]
        if len(ckpt.answered(fingerprints, include_failed=include_failed)) < len(set(fingerprints)):
            return None
        # Without --retry-failed the answers' status is not read (the key index alone
        # answers, about half the cost): the batch is recorded as perhaps holding errors,
        # so a --retry-failed run still builds it and its output pass records it exactly.
        invalid = len(found) - len(fingerprints)
        done = DoneBatch(digest, len(fingerprints), invalid, errors=include_failed)
        ckpt.record_done_batches([done])
        return done

    def _selected_items(
        self, table: InputTable, builder: RequestBuilder
    ) -> Iterator[list[Request | Result]]:
        for _, items in built_batches(table, builder, select=self._selector()):
            if items:
                yield items

    # --- the async pipeline -----------------------------------------------------

    def _dispatch_all(
        self, ckpt: JobStore, items: Iterable[list[Request | Result]], dispatcher: Dispatcher
    ) -> None:
        pipeline = Pipeline(
            self.job,
            ckpt,
            dispatcher,
            retry_failed=self.options.retry_failed,
            progress=self.progress,
            on_progress=self.on_progress,
        )
        handlers = [(sig, signal.getsignal(sig)) for sig in (signal.SIGINT, signal.SIGTERM)]
        try:
            run_async(self._main, pipeline, items)
        except FatalApiError as exc:
            # The output is still written (unfinished rows as pending) before exit 4.
            log.error("%s", exc, extra={"event": "fatal_error"})
            self.stopped, self.fatal_message = "fatal", str(exc)
            if exc.failed_alike is not None and ckpt.own is not None:
                ckpt.own.forget_failed(*exc.failed_alike)  # before the output pass records it
        finally:
            # asyncio resets the handlers it borrowed to the defaults, not to the caller's.
            for sig, handler in handlers:
                if handler is not None:
                    signal.signal(sig, handler)
        if self.stopped is None and pipeline.outcome is not None:
            self.stopped = pipeline.outcome.stopped
        if self.stopped == "budget":
            log.warning(
                "limits.max_cost_usd = %s reached: sending nothing more",
                self.job.limits.max_cost_usd,
                extra={"event": "budget_stop", "run_cost_usd": self._run_cost()},
            )
        self._log_stopped()

    async def _main(self, pipeline: Pipeline, batches: Iterable[list[Request | Result]]) -> None:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._watch_signals, outer.cancel_scope, pipeline)
            await pipeline.run(batches)
            outer.cancel_scope.cancel()

    async def _watch_signals(self, scope: anyio.CancelScope, pipeline: Pipeline) -> None:
        # The first signal sends nothing more but lets requests in flight finish: the API
        # bills them whether or not we wait, and a rerun would pay for them again. The
        # grace deadline cancels those sends, not the checkpoint writer, which still
        # commits every answer that came back. The second signal stops at once.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stopped == "interrupted":
                    log.warning(
                        "%s again: stopping now, saving what finished",
                        name,
                        extra={"event": "signal_again"},
                    )
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
                    extra={
                        "event": "signal",
                        "signal": name,
                        "in_flight": on_the_wire,
                        "grace_s": grace,
                    },
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
            extra={
                "event": "stopped",
                "signal": name,
                "in_flight": on_the_wire,
                "abandoned": abandoned,
            },
        )


class _DoneBatches:
    """The output pass's hook: the batches whose every request has an answer."""

    def __init__(self, job_key: str) -> None:
        self.job_key = job_key
        self.start = 0
        self.batches = 0
        self.found: list[DoneBatch] = []

    def __call__(
        self,
        batch: pa.RecordBatch,
        items: Sequence[Item],
        answers: Mapping[str, Answer],
    ) -> None:
        first, self.start = self.start, self.start + batch.num_rows
        self.batches += 1
        requests = [item for item in items if not isinstance(item, Result)]
        if not all(request.fingerprint in answers for request in requests):
            return
        errors = any(answers[r.fingerprint].result.status == "error" for r in requests)
        digest = batch_digest(batch, first, self.job_key)
        self.found.append(DoneBatch(digest, len(requests), len(items) - len(requests), errors))


def _requests_word(count: int) -> str:
    return "request" if count == 1 else "requests"
