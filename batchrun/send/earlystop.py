"""Stop a misconfigured job early: its first answers are all one non-retryable error.

Some proxies (LiteLLM) answer an unknown model or a key they cannot check with
HTTP 400, not 404/401, so every row fails alike; a 300,000-row job would send
300,000 doomed requests. The rule, over a dispatcher's life (one run; a Ray
worker's dispatcher runs once a batch):

- while no row of the run has ended ok, each row that fails with a non-retryable
  error (a 4xx other than 429) of the same ``error_type`` and message counts;
- at ``STOP_AFTER`` such rows the run sends nothing more and waits for the
  requests in flight; if none of them ended ok either, the job stops (exit 4);
- one ok row, or a non-retryable error with another type or message, disarms the
  rule for the rest of the run;
- the rows counted failed because of the job, not their own content: the engine drops
  them from the checkpoint (``Checkpoint.forget_failed``), so a plain rerun sends them.

Retryable failures (5xx, timeouts) neither count nor disarm.

So a job with genuinely bad rows among good ones is never stopped: its first ok
row disarms the rule, and rows that are bad each in their own way (a too-long
prompt names its length) differ in their message.
"""

from __future__ import annotations

import anyio

from batchrun._errors import FatalApiError
from batchrun._types import Result

STOP_AFTER = 20
"""Identical non-retryable errors, with no ok row before them, that stop a job."""


class FirstAnswers:
    """Watches a run's first answers; ``verdict`` raises ``FatalApiError`` to stop it."""

    def __init__(self, stop_after: int = STOP_AFTER) -> None:
        self.stop_after = stop_after
        self.armed = True
        self.error: tuple[str, str] | None = None  # (error_type, message)
        self.count = 0
        self._hold: anyio.Event | None = None  # set: sends may go on

    def finished(self, result: Result, *, permanent: bool) -> None:
        """Count one finished row (``permanent``: its error is not worth a retry)."""
        if not self.armed or (result.status == "error" and not permanent):
            return
        error = (result.error_type or "", result.error_message or "")
        if result.status == "ok" or (self.error is not None and error != self.error):
            self._disarm()
            return
        self.error, self.count = error, self.count + 1
        if self.count >= self.stop_after and self._hold is None:
            self._hold = anyio.Event()  # hold new sends until those in flight answer

    def new_run(self) -> None:
        """A new ``Dispatcher.run`` (a new event loop, maybe): no hold carries over."""
        self._hold = None  # the next identical error holds again

    @property
    def holding(self) -> bool:
        """True while sends wait for the verdict."""
        return self._hold is not None and self.armed

    async def wait(self) -> None:
        """Before a send: wait while the verdict is pending."""
        if self._hold is not None and self.armed:
            await self._hold.wait()

    def verdict(self, in_flight: int) -> None:
        """After an attempt ends: with nothing in flight, stop or go on."""
        if self._hold is None or not self.armed or in_flight:
            return
        error_type, message = self.error or ("", "")
        raise FatalApiError(
            f"the first {self.count} answers were all the same error and none succeeded"
            f" ({error_type}): {message} -- check request.model, the API key and"
            " request.extra; stopping the job. The rows that failed this way are not kept"
            " as failed: the same command, run again after the fix, sends them and every"
            " row not sent yet (no --retry-failed needed)",
            failed_alike=(error_type, message),
        )

    def _disarm(self) -> None:
        self.armed = False
        if self._hold is not None:
            self._hold.set()
