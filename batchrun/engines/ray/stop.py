"""SIGINT / SIGTERM under the Ray engine: nothing new is sent, nothing paid is dropped.

The local engine's promise (``batchrun.engines.local``) across processes:

- The driver watches the signals from a thread (``DriverSignals``): the signal's byte
  arrives on a wakeup fd the moment it is delivered, whatever the main thread is doing
  inside Ray, and the thread tells the coordinator at once (``StopShare.interrupt``,
  with the grace deadline).
- Each worker running a batch waits on the coordinator for the stop (``run_watched``:
  a call that returns when the signal comes, or after ``WATCH_S`` to show the worker
  is alive) and, once told, calls ``Pipeline.stop_sending`` with the grace left:
  nothing more is sent, the sends on the wire get the grace to come back and the
  checkpoint writer commits every answer. The coordinator leases no more slots, so no
  batch starts sending after the stop.
- A batch holds its slots until its answers are committed: when no slots are held
  (``StopShare.settled``), every answer is in a worker's checkpoint. The rest of the
  input then goes through the workers without a send and the run ends as usual (exit
  130); if that takes longer than ``FINISH_S``, the driver stops Ray (the main thread
  gets ``KeyboardInterrupt``) and writes the output from the checkpoints. A second
  signal stops at once.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import logging
import math
import select
import signal
import socket
import threading
import time
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from batchrun.engines.local import COMMIT_GRACE_S, SIGNAL_GRACE_S
from batchrun.engines.ray.claims import Claims
from batchrun.engines.ray.shares import Call, Slots
from batchrun.job.config import Job

if TYPE_CHECKING:
    from batchrun._types import Request, Result
    from batchrun.engines.pipeline import Pipeline
    from batchrun.send.dispatch import DispatchOutcome

log = logging.getLogger("batchrun")

WATCH_S = 1.0
"""Longest a worker's wait for the stop lasts before it asks again (a heartbeat for its
claims, ``batchrun.engines.ray.claims``); the stop itself reaches it at once."""
SETTLE_POLL_S = 0.05
FINISH_S = 10.0
"""Once the workers have saved everything, how long the run may take to end by itself."""
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopShare:
    """The coordinator's part of a signal (a mixin of the coordinator actor,
    ``batchrun.engines.ray.coordinator.Coordinator``)."""

    stopped: str | None
    slots: Slots
    claims: Claims
    stop_deadline: float | None = None  # wall clock: workers may sit on other hosts
    on_the_wire = 0
    abandoned = 0

    _changed: asyncio.Event | None = None

    def interrupt(self, deadline: float) -> None:
        self.stop_deadline = deadline
        self.stopped = self.stopped or "interrupted"
        self.wake()

    async def interrupted(self, worker: str, wait_s: float = 0.0) -> float | None:
        """The grace deadline (wall clock) once a signal stopped the run, else None
        (after waiting up to ``wait_s`` for it). Asked by a working ``worker``: it is
        alive (its claims hold)."""
        self.claims.alive(worker)
        if self.stop_deadline is None:
            await self.changed(wait_s)
        return self.stop_deadline

    async def changed(self, wait_s: float) -> None:
        """Return at the next ``wake`` (a stop, slots or claims given back), or after
        ``wait_s``. Coordinator calls run on one event loop: no lock is needed."""
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), wait_s)

    def wake(self) -> None:
        """Wake every call waiting in ``changed``."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def stopped_sending(self, on_the_wire: int, abandoned: int) -> None:
        self.on_the_wire += on_the_wire
        self.abandoned += abandoned

    def settled(self) -> tuple[bool, int, int]:
        """(no batch is sending or committing, requests on the wire at the stop, of
        those abandoned at the grace deadline)."""
        return not self.slots.held, self.on_the_wire, self.abandoned


# --- a worker ------------------------------------------------------------------------


async def run_watched(
    pipeline: Pipeline, items: list[Request | Result], call: Call, worker: str
) -> DispatchOutcome:
    """``pipeline.run`` on one batch, stopped (with the grace left) once a signal stops
    the run; what was on the wire then is told to the coordinator before returning."""
    stop: list[int] = []
    abandoned = pipeline.dispatcher.counters.abandoned
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch, pipeline, call, worker, stop)
        outcome = await pipeline.run([items])
        tg.cancel_scope.cancel()
    if stop:
        lost = pipeline.dispatcher.counters.abandoned - abandoned
        await call("stopped_sending", stop[0], lost)
    return outcome


async def _watch(pipeline: Pipeline, call: Call, worker: str, stop: list[int]) -> None:
    while (deadline := await call("interrupted", worker, WATCH_S)) is None:
        pass  # no stop within WATCH_S: ask again
    stop.append(pipeline.stop_sending(max(deadline - time.time(), 0.0)))


# --- the driver ------------------------------------------------------------------------


class RayRun(Protocol):
    """What ``DriverSignals`` needs of the run (``batchrun.engines.ray.engine.RayRun``)."""

    job: Job
    stopped: str | None
    signalled: tuple[str, int, int] | None


class DriverSignals:
    """While Ray runs the job: the first signal stops the workers' sending and, once
    their answers are committed, raises ``KeyboardInterrupt`` in the main thread (which
    shuts Ray down and writes the output from the checkpoints); the second raises at once.

    ``run.signalled`` becomes (signal name, requests on the wire, abandoned) once settled.
    """

    def __init__(self, run: RayRun, coordinator: Any) -> None:
        self.run = run
        self.coordinator = coordinator
        self.grace_s = min(run.job.limits.timeout_s, SIGNAL_GRACE_S)
        self.count = 0
        self.name: str | None = None  # the first signal's
        self.settled = False
        self.done = False
        self.lock = threading.Lock()
        self.active = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> DriverSignals:
        if not self.active:
            return self  # signals reach only the main thread: nothing to watch from here
        self.reader, self.writer = socket.socketpair()
        self.writer.setblocking(False)
        self.previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        self.old_fd = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        self.thread = threading.Thread(target=self._watch, name="batchrun-signals", daemon=True)
        self.thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.active:
            return
        with self.lock:
            self.done = True  # the watcher raises nothing in the main thread from now
        signal.set_wakeup_fd(self.old_fd)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # a pending interrupt is delivered here, first
        self.writer.close()
        self.thread.join()
        self.reader.close()
        if kind is None and self.name is not None and self.run.signalled is None:
            # The run ended before the watcher saw it settle: every batch has returned.
            self.run.signalled = (self.name, *self._ask_settled()[1:])

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # The watcher thread does the work; the main thread only unwinds, when told to.
        self.count += 1
        if self.count > 1 or self.settled:
            raise KeyboardInterrupt

    def _watch(self) -> None:
        signum = self._next_signal(math.inf)
        if signum is None:
            return
        self.name = name = signal.Signals(signum).name
        self.run.stopped = "interrupted"
        self.coordinator.interrupt.remote(time.time() + self.grace_s)
        log.warning(
            "%s: sending nothing more; waiting up to %.0f s for the workers' requests in"
            " flight (signal again to stop at once)",
            *(name, self.grace_s),
            extra={"event": "signal"},
        )
        if self._wait_settled(name) and not self._wait_done(name):
            self._interrupt_main()

    def _wait_done(self, name: str) -> bool:
        """Every answer is saved: let the run end by itself (its last batches send
        nothing) for up to ``FINISH_S``; True if it did (or a second signal came).

        Ending Ray Data's iteration by ``KeyboardInterrupt`` can leave its prefetch
        threads calling Ray after ``ray.shutdown``, which ends the process with exit 1
        (the answers are saved, but the output is not written)."""
        deadline = time.monotonic() + FINISH_S
        while not self.done and time.monotonic() < deadline:
            if self._next_signal(SETTLE_POLL_S) is not None and not self.done:
                log.warning("%s again: stopping now", name, extra={"event": "signal_again"})
                return True  # the handler raised in the main thread
        return self.done

    def _wait_settled(self, name: str) -> bool:
        """Wait for the workers to commit what came back; False if the run ended first."""
        deadline = time.monotonic() + self.grace_s + COMMIT_GRACE_S
        while time.monotonic() < deadline:
            try:
                settled, on_the_wire, abandoned = self._ask_settled()
            except Exception:  # Ray is shutting down: the run ended first
                return False
            if settled:
                self.run.signalled = (name, on_the_wire, abandoned)
                return True
            if self._next_signal(SETTLE_POLL_S) is not None:
                log.warning(
                    "%s again: stopping now; answers not yet saved are lost",
                    name,
                    extra={"event": "signal_again"},
                )
                return False  # the handler raised in the main thread
            if self.done:
                return False
        log.warning(
            "%s: the workers did not finish within %.0f s: stopping them now",
            *(name, self.grace_s + COMMIT_GRACE_S),
            extra={"event": "workers_stopped"},
        )
        return True

    def _ask_settled(self) -> tuple[bool, int, int]:
        import ray

        settled: tuple[bool, int, int] = ray.get(self.coordinator.settled.remote())
        return settled

    def _interrupt_main(self) -> None:
        with self.lock:
            if not self.done:
                self.settled = True
                _thread.interrupt_main(signal.SIGINT)

    def _next_signal(self, timeout: float) -> int | None:
        """The next signal's number; None after ``timeout`` or once the run ended."""
        ready, _, _ = select.select([self.reader], [], [], None if timeout == math.inf else timeout)
        if not ready:
            return None
        data = self.reader.recv(1)
        return data[0] if data else None


def log_stopped(signalled: tuple[str, int, int] | None) -> None:
    """After a signal, what became of the requests the workers had on the wire."""
    if signalled is None:
        return
    name, on_the_wire, abandoned = signalled
    back = on_the_wire - abandoned
    log.warning(
        "%s: stopped; %d of %d %s in flight came back and %s saved, %d abandoned at the"
        " deadline (perhaps billed, sent again by a rerun)",
        *(name, back, on_the_wire, "request" if on_the_wire == 1 else "requests"),
        *("is" if back == 1 else "are", abandoned),
        extra={"event": "stopped"},
    )


__all__ = ["DriverSignals", "StopShare", "log_stopped", "run_watched"]
