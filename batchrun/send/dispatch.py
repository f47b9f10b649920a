"""The dispatcher: send every request as fast as the limits allow, and no faster.

One run is one anyio task group of ``concurrency`` row workers, each sending one
request at a time (so at most ``concurrency`` are in flight, with no limiter to pay
for), sharing a ``Pacer`` (requests/tokens per minute), a ``PauseGate`` (the global
429 pause) and an optional ``Budget``. Finished rows go straight to the consumer
when it has room, else to an unbounded backlog drained by one forwarding task: a
slow consumer never holds a connection, and a row paid for is never dropped by a stop.

A row's life: ``_row`` -> (per attempt) ``_attempt`` -> ``_pace`` -> ``_send`` ->
``Sender.send``; a failed attempt -> ``_after_failure`` (pause / slow down / back off).
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

import anyio
import anyio.lowlevel
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from batchrun._errors import AttemptError, FatalApiError, PermanentError
from batchrun._types import Charge, Request, RequestResult, Result
from batchrun.job.config import Job
from batchrun.send.advice import ReservationWarning
from batchrun.send.budget import Budget, result_cost
from batchrun.send.earlystop import FirstAnswers
from batchrun.send.headers import forget_warnings
from batchrun.send.ratelimit import (
    PAUSE_CAP_S,
    Backoff,
    LearnedLimits,
    Pacer,
    PauseGate,
    compute_backoff,
)
from batchrun.send.reask import Check, FollowUps
from batchrun.send.transport import Reply, Sender, completions_url, make_transport
from batchrun.store.intents import Intent, IntentLog

log = logging.getLogger("batchrun")
retry_log = logging.getLogger("batchrun.retry")
ANNOUNCE_S = 5.0
"""A pause the server asks for at least this long is announced (log, progress line)."""

# Attempts that may have been billed although no usage came back (drop, stall, cut, garbage).
_MAYBE_BILLED = frozenset(
    {"timeout", "connection_error", "broken_stream", "malformed_response", "stream_error"}
)
# 429s do not use up ``limits.max_attempts``: a paced run waits them out. This allowance
# only ends a row that an API refuses for good (say, a spent quota) with status 429.
RATE_LIMITED_ALLOWANCE = 100


@dataclass(slots=True)
class Counters:
    """Live numbers for a progress display; the dispatcher updates them in place."""

    sent: int = 0  # HTTP requests sent (attempts, not rows)
    ok: int = 0
    failed: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    in_flight: int = 0
    abandoned: int = 0  # sends cancelled by a signal's grace deadline (maybe billed, lost)
    cost_usd: float = 0.0  # this run's charges: real cost, or the worst case without usage
    rpm_limit: float | None = None  # requests per minute in use (configured or learned)
    paused: tuple[float, str] | None = None  # (until, why): the last pause announced

    @property
    def rows_sent(self) -> int:
        """Rows this dispatcher finished (ok + failed); ``Progress.finished`` also counts
        the rows a run took from the checkpoint, shared or found invalid."""
        return self.ok + self.failed


class ResultSink(Protocol):
    """Where ``Dispatcher.run`` puts finished rows, without waiting when it has room: a
    memory object stream, or the pipeline's parsing stream in front of one."""

    def send_nowait(self, item: RequestResult, /) -> None: ...

    async def send(self, item: RequestResult, /) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    """How a run ended: ``stopped`` is None when every request was finished."""

    stopped: Literal["budget", "interrupted"] | None = None


class _Stop(Exception):
    """The budget cannot cover the next attempt, or a signal came: take no more work.

    ``unfinished`` carries a row abandoned after attempts that may have been billed
    (a pending ``Result`` with their charges), so the checkpoint still records them."""

    def __init__(self, unfinished: RequestResult | None = None) -> None:
        super().__init__()
        self.unfinished = unfinished


class _AttemptFailed(Exception):
    """One attempt's error, with when it was sent (a 429 only slows down newer sends)."""

    def __init__(self, error: AttemptError, sent_at: float) -> None:
        self.error = error
        self.sent_at = sent_at


class Dispatcher:
    """Sends a stream of ``Request`` and emits ``(request, result)`` for each finished row.

    Reusable: each ``run`` gets its own connection pool (transport) and task group;
    limits learned from the API's headers carry over to the next run.
    """

    def __init__(
        self,
        job: Job,
        *,
        api_key: str,
        base_url: str | None = None,
        budget: Budget | None = None,
        counters: Counters | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        share: float = 1.0,
        gate: PauseGate | None = None,
        check: Check | None = None,
    ) -> None:
        # ``share`` and ``gate`` let several processes split one job's limits (the Ray
        # engine): each paces to its share, and a shared gate spreads a 429's pause.
        self.limits = job.limits
        self.follow_ups = FollowUps.of(job.request, check)  # re-asks, cut-off retries
        self.share = share
        self.gate = gate
        self.price = job.price
        self.url = completions_url(base_url or job.api.base_url)
        # Without a cap, an unlimited budget still prices every attempt and keeps the
        # worst case of those whose usage never came back (a later cap counts them).
        if budget is None and job.price is not None:
            budget = Budget(math.inf, job.price)
        self.budget = budget
        self.counters = counters if counters is not None else Counters()
        self.learned = LearnedLimits()
        # Said once per dispatcher: a slow pace that is the job's own doing.
        self.slow = ReservationWarning(job)
        # A misconfigured job stops after its first answers (the Ray engine runs once a batch).
        self.first = FirstAnswers()
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self._api_key = api_key
        self._transport = transport
        self._pacer: tuple[tuple[object, ...], Pacer] | None = None
        self._run: _DispatchRun | None = None
        self.interrupted = False

    def pacer(self) -> Pacer:
        """The next run's pacer: the last one while limits and share are unchanged, so
        runs in a row (the Ray engine runs one per batch) add no burst between them."""
        limits = self.limits
        key = (limits.requests_per_minute, limits.tokens_per_minute, self.share)
        if self._pacer is None or self._pacer[0] != key:
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            self._pacer = (key, Pacer(rpm, tpm, self.learned, share=self.share))
        return self._pacer[1]

    async def run(
        self,
        requests: MemoryObjectReceiveStream[Request],
        results: ResultSink,
        intents: IntentLog | None = None,
    ) -> DispatchOutcome:
        """Send everything ``requests`` yields; close ``results`` when done.

        Returns when the request stream is closed and every row is finished, or early
        with ``stopped="budget"``; raises ``FatalApiError`` on 401/403/unknown model.
        With ``intents`` (the checkpoint writer's), a priced attempt is only sent once
        its worst case is committed (``batchrun.store.intents``); its charge names it.
        """
        transport = self._transport or make_transport(
            self.limits.concurrency, self.url, self._api_key
        )
        async with transport, aclosing(results):
            sender = Sender(
                transport, url=self.url, api_key=self._api_key, timeout_s=self.limits.timeout_s
            )
            self._run = _DispatchRun(self, sender, intents)
            try:
                return await self._run.run(requests, results)
            finally:
                self._run = None

    def stop_sending(self, grace_s: float = math.inf) -> int:
        """A signal: send nothing more, now and in later runs; sends already on the wire
        get ``grace_s`` seconds to come back, then are cancelled (their rows stay pending).

        Returns how many requests were on the wire."""
        self.interrupted = True
        return self._run.stop_sending(grace_s) if self._run is not None else 0


class _DispatchRun:
    """The state of one ``Dispatcher.run``: pacing, pause, workers, and how it stops."""

    def __init__(
        self, dispatcher: Dispatcher, sender: Sender, intents: IntentLog | None = None
    ) -> None:
        self.d = dispatcher
        self.intents = intents if dispatcher.budget is not None else None
        self.counters = dispatcher.counters
        self.sender = sender
        self.pacer = dispatcher.pacer()
        self.gate = dispatcher.gate if dispatcher.gate is not None else PauseGate()
        self.counters.rpm_limit = self.pacer.rpm_in_use
        self.worker_scopes: set[anyio.CancelScope] = set()
        self.sending: set[anyio.CancelScope] = set()
        self.stopped: Literal["budget", "interrupted"] | None = None
        if dispatcher.interrupted:
            self.stopped = "interrupted"
        self.fatal: FatalApiError | None = None
        self.first = dispatcher.first
        self.first.new_run()
        forget_warnings()
        self.slow = dispatcher.slow
        out, self.finished = anyio.create_memory_object_stream[RequestResult](math.inf)
        self.out = out
        self.backlog = 0  # answers in the forwarder's stream (cheaper than its statistics())

    async def run(
        self, requests: MemoryObjectReceiveStream[Request], results: ResultSink
    ) -> DispatchOutcome:
        self.results = results
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._forward, results)
            async with self.out:
                for _ in range(self.d.limits.concurrency):
                    tg.start_soon(self._worker, requests, self.out.clone())
        if self.fatal is not None:
            raise self.fatal
        return DispatchOutcome(stopped=self.stopped)

    async def _forward(self, results: ResultSink) -> None:
        # The only task that may wait on the consumer; workers never do.
        async with self.finished:
            async for item in self.finished:
                self.backlog -= 1
                await results.send(item)

    async def _worker(
        self,
        requests: MemoryObjectReceiveStream[Request],
        out: MemoryObjectSendStream[RequestResult],
    ) -> None:
        with out, anyio.CancelScope() as scope:
            self.worker_scopes.add(scope)
            try:
                while not self.stopped:
                    try:  # no checkpoint (a loop turn) per request when one is waiting
                        request = requests.receive_nowait()
                    except anyio.WouldBlock:
                        request = await requests.receive()
                    self._emit(out, (request, await self._row(request, scope)))
                    self.first.verdict(self.counters.in_flight)
            except anyio.EndOfStream:
                pass
            except _Stop as stop:
                if stop.unfinished is not None:
                    self._emit(out, stop.unfinished)
                if self.fatal is None:
                    self._stop_taking_work()
            except FatalApiError as exc:
                self._abort(exc)
            finally:
                self.worker_scopes.discard(scope)

    def _emit(self, out: MemoryObjectSendStream[RequestResult], item: RequestResult) -> None:
        # Straight to the consumer when it has room (the usual case), else to the
        # forwarder's backlog; either way without waiting.
        if self.backlog == 0:
            try:
                self.results.send_nowait(item)
                return
            except anyio.WouldBlock:
                pass
        out.send_nowait(item)
        self.backlog += 1

    def _stop_taking_work(self, reason: Literal["budget", "interrupted"] = "budget") -> None:
        """Budget or signal: cancel every worker not in the middle of a send (waiting on
        the pacer, the pause, a backoff or the next request); the first reason stays."""
        self.stopped = self.stopped or reason
        for scope in self.worker_scopes - self.sending:
            scope.cancel()

    def stop_sending(self, grace_s: float) -> int:
        self._stop_taking_work("interrupted")
        deadline = anyio.current_time() + grace_s
        for scope in self.sending:  # a worker ends after its send: its scope bounds the send
            scope.deadline = min(scope.deadline, deadline)
        return len(self.sending)

    def _abort(self, exc: FatalApiError) -> None:
        """Fatal answer: cancel every worker, in-flight sends included."""
        if self.fatal is None:
            self.fatal = exc
        for scope in self.worker_scopes:
            scope.cancel()

    async def _row(self, request: Request, scope: anyio.CancelScope) -> Result:
        """All attempts at one row; the result is ok or error (never raises Attempt errors).

        ``max_attempts`` counts failures other than 429s; those have their own allowance.
        """
        max_attempts = max(self.d.limits.max_attempts, 1)
        charges: list[Charge] = []  # attempts that may have been billed
        sent = failures = refusals = 0
        turns = self.d.follow_ups.start()
        while True:
            try:
                result = await self._attempt(request, scope, charges)
            except _AttemptFailed as failed:
                exc = failed.error
                if exc.error_type == "too_large_for_limit":  # refused by the pacer, not sent
                    return self._finished(_error_result(exc, sent), charges)
                sent += 1
                if exc.error_type == "rate_limited" and refusals < RATE_LIMITED_ALLOWANCE:
                    refusals += 1
                else:
                    failures += 1
                permanent = isinstance(exc, PermanentError)
                if permanent or failures == max_attempts:
                    return self._finished(_error_result(exc, sent), charges, permanent)
                if self.stopped:  # no retry after a stop: the row stays pending
                    raise _Stop(_unfinished(request, charges)) from None
                self.first.verdict(self.counters.in_flight)
                await self._after_failure(request, failed, max(failures, 1))
            except _Stop:
                raise _Stop(_unfinished(request, charges)) from None
            else:
                sent += 1
                again = turns.next(request, result)
                if again is None:
                    result.attempts = sent
                    return self._finished(turns.stamp(result), charges)
                request = again

    async def _attempt(
        self, request: Request, scope: anyio.CancelScope, charges: list[Charge]
    ) -> Result:
        # Money before pace: a send delayed by a wait for money would bunch sends the
        # pacer spread out. The reservation is returned if nothing is sent.
        reserved = await self._reserve(request)
        intent = None
        try:
            sent_at = await self._pace(request)
            intent = await self._hold(request, reserved)
            # A stop may have come while we ran without yielding: never send after one.
            if self.stopped or self.fatal:
                await anyio.lowlevel.checkpoint()  # delivers a pending cancellation
                raise _Stop
        except PermanentError as exc:  # too large for the tokens-per-minute limit
            self._release(reserved)
            raise _AttemptFailed(exc, time.monotonic()) from None
        except BaseException:
            self._release(reserved, intent)
            raise
        self.sending.add(scope)
        try:
            return await self._send(request, reserved, charges, (sent_at, intent))
        except FatalApiError as exc:
            self._abort(exc)  # before this worker yields to any other
            raise
        except anyio.get_cancelled_exc_class():
            # Cut on the wire (grace over, fatal abort): perhaps billed. The budget keeps
            # its worst case, as does the checkpoint (its intent stays unsettled).
            self._lost(reserved)
            raise
        finally:
            self.sending.discard(scope)

    async def _hold(self, request: Request, reserved: float) -> Intent | None:
        """Write the attempt's worst case to the checkpoint before its bytes leave."""
        if self.intents is None:
            return None
        return await self.intents.hold(request.fingerprint, reserved, time.time())

    def _lost(self, reserved: float) -> None:
        if self.stopped == "interrupted":  # the signal's grace ran out on the wire
            self.counters.abandoned += 1
        if self.d.budget is not None:
            self.d.budget.settle(reserved, reserved)
            self.counters.cost_usd += reserved

    async def _pace(self, request: Request) -> float:
        """Wait out any global pause or early-stop hold, then the rate buckets; again if
        either began meanwhile (the admission not sent is withdrawn), so a send goes when
        the pacer admitted it. Returns then."""
        while True:
            await self.gate.wait()
            await self.first.wait()
            sent_at = await self.pacer.acquire(request.est_tokens)
            if self.gate.is_open and not self.first.holding:
                return sent_at
            self.pacer.withdraw(request.est_tokens, sent_at)

    async def _reserve(self, request: Request) -> float:
        """Stop on money, not on reservations: wait while requests in flight may still
        free enough; ``_Stop`` only when it does not fit with none left to settle."""
        if self.d.budget is None:
            return 0.0
        reserved = await self.d.budget.reserve(request)
        if reserved is None:
            raise _Stop
        return reserved

    def _release(self, reserved: float, intent: Intent | None = None) -> None:
        """Nothing was billed (or sent): the reservation and the intent go."""
        if self.d.budget is not None:
            self.d.budget.settle(reserved, 0.0)
        if intent is not None and self.intents is not None:
            self.intents.release(intent)

    async def _send(
        self,
        request: Request,
        reserved: float,
        charges: list[Charge],
        admitted: tuple[float, Intent | None],
    ) -> Result:
        sent_at, intent = admitted  # when the pacer admitted it; its write-ahead record
        counters = self.counters
        counters.sent += 1
        counters.in_flight += 1
        try:
            reply = await self.sender.send(request)
        except AttemptError as exc:
            # An answer lost after the API did the work is billed: keep its worst case.
            if exc.error_type in _MAYBE_BILLED:
                self._charge(reserved, reserved, charges, intent, usage_known=False)
            else:
                self._release(reserved, intent)
            if exc.error_type == "rate_limited":
                counters.rate_limited += 1
            raise _AttemptFailed(exc, sent_at) from None
        except FatalApiError:
            self._release(reserved, intent)  # refused (401/403/404): not billed
            raise
        finally:
            counters.in_flight -= 1
        return self._succeeded(request, reply, (reserved, intent), charges, sent_at)

    def _succeeded(
        self,
        request: Request,
        reply: Reply,
        held: tuple[float, Intent | None],
        charges: list[Charge],
        sent_at: float,
    ) -> Result:
        self.pacer.observe(reply.rate, sent_at)
        if self.slow.pending:  # said once an answer shows how the API counts tokens
            real = self.pacer.counts_real
            self.slow.check(self.d.limits, self.d.learned, request.est_prompt_tokens, real)
        self.pacer.reconcile(request, reply.result, sent_at)
        self.pacer.succeeded(sent_at)
        self.counters.rpm_limit = self.pacer.rpm_in_use
        if (wait := reply.rate.exhausted_for_s()) is not None:
            # nothing left in this window: wait before the 429
            self._pause(wait, "x-ratelimit-remaining at 0")
        self._price(request, reply.result, held, charges)
        return reply.result

    def _price(
        self,
        request: Request,
        result: Result,
        held: tuple[float, Intent | None],
        charges: list[Charge],
    ) -> None:
        """The one place an answer is priced: from its usage, or (no usage came back)
        at the worst case it reserved, which it keeps."""
        if self.d.budget is None:
            return  # unpriced model: nothing to charge
        reserved, intent = held
        self.d.budget.learn(request, result.prompt_tokens)
        cost = result_cost(self.d.price, result)
        if cost is None:
            self._charge(reserved, reserved, charges, intent, usage_known=False)
        else:
            self._charge(reserved, cost, charges, intent, usage_known=True)

    def _charge(
        self,
        reserved: float,
        cost: float,
        charges: list[Charge],
        intent: Intent | None,
        *,
        usage_known: bool,
    ) -> None:
        """The attempt's real cost (or its worst case kept): stored with the row's
        result, whose commit settles the attempt's intent."""
        if self.d.budget is not None:
            self.d.budget.settle(reserved, cost)
            settles = None if intent is None else intent.id
            charges.append(Charge(cost, usage_known, time.time(), settles))
            self.counters.cost_usd += cost

    async def _after_failure(self, request: Request, failed: _AttemptFailed, attempt: int) -> None:
        """Before the next attempt: a 429 pauses everyone; anything else backs off alone."""
        self.counters.retries += 1
        exc, wait = failed.error, 0.0
        if exc.error_type == "rate_limited":
            self._rate_limited(exc, failed.sent_at)
        else:
            b = self.d.backoff
            wait = compute_backoff(attempt, self.d.rng, base_s=b.base_s, cap_s=b.cap_s)
        retry_log.debug(
            "retry %s after attempt %d: %s (%s); backoff %.3f s",
            request.key,
            attempt,
            exc.error_type,
            exc.message,
            wait,
        )
        await anyio.sleep(wait)

    def _rate_limited(self, exc: AttemptError, sent_at: float) -> None:
        if exc.retry_after is not None:
            self._pause(exc.retry_after, exc.retry_after_from)
        else:
            self.pacer.throttled(sent_at)
            self.counters.rpm_limit = self.pacer.rpm_in_use

    def _pause(self, seconds: float, source: str) -> None:
        """The one shared pause the server asked for, at most ``PAUSE_CAP_S``. A pause of a
        second or more that starts or lengthens it is a ``paused`` event; a long one is
        announced as a warning and shown on the progress line."""
        seconds = min(seconds, PAUSE_CAP_S)
        lengthened = self.gate.pause_for(seconds)
        if lengthened < 1.0:
            return
        fields = {"event": "paused", "pause_s": round(seconds, 3), "reason": source}
        if lengthened >= ANNOUNCE_S:
            self.counters.paused = (time.monotonic() + seconds, source)
            retry_log.warning("paused %.0f s: the server asked (%s)", seconds, source, extra=fields)
        else:
            retry_log.info(
                "every send paused for %.1f s: the server asked (%s)", seconds, source, extra=fields
            )

    def _finished(self, result: Result, charges: list[Charge], permanent: bool = False) -> Result:
        if self.first.armed:
            self.first.finished(result, permanent=permanent)
        result.charges = tuple(charges)
        result.cost_usd = _row_cost(charges, priced=self.d.budget is not None)
        counters = self.counters
        if result.status == "ok":
            counters.ok += 1
        else:
            counters.failed += 1
        result.completed_at = datetime.now(UTC)
        return result


def _row_cost(charges: list[Charge], *, priced: bool) -> float | None:
    """What this run paid for a row, from the attempts whose usage came back; None when
    unpriced or when every paid attempt's usage is unknown (0.0: nothing was billed)."""
    known = [charge.cost_usd for charge in charges if charge.usage_known]
    if not priced or (charges and not known):
        return None
    return sum(known)


def _unfinished(request: Request, charges: list[Charge]) -> RequestResult | None:
    """A row given up after attempts that may have been billed: pending, with its charges."""
    return (request, Result(status="pending", charges=tuple(charges))) if charges else None


def _error_result(exc: AttemptError, attempts: int) -> Result:
    return Result(
        status="error", error_type=exc.error_type, error_message=exc.message, attempts=attempts
    )
