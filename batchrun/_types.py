"""The records that flow between stages: a row's request in, its result out.

job -> rows -> ``Request`` -> dispatcher -> ``Result`` -> checkpoint -> output -> report
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

Status = Literal["ok", "error", "invalid", "pending"]


@dataclass(frozen=True, slots=True)
class Request:
    """One row's request, ready to send.

    ``fingerprint`` is a versioned content hash of the wire body (plus the row key
    when deduplication is off): the checkpoint keys answers by it, so a changed
    template or model changes it and the row is sent again.
    """

    key: str
    body: dict[str, Any]
    fingerprint: str
    est_prompt_tokens: int
    max_completion_tokens: int
    # "ascii" | "mixed" | "wide" (``send.budget.text_kind``), set once by the request builder so
    # that the budget does not walk the text again on every reservation.
    text_kind: str | None = None
    # The body as canonical JSON (UTF-8), when the builder wrote it for the fingerprint:
    # sent as is, so the body is not encoded a second time (``Transport.post_json``).
    wire: bytes | None = None

    @property
    def est_tokens(self) -> int:
        """What the request counts against a tokens-per-minute limit before its answer."""
        return self.est_prompt_tokens + self.max_completion_tokens


class Keyed(NamedTuple):
    """A valid row's request as the output pass needs it: its key and fingerprint,
    without the body (``RequestBuilder.keyed``)."""

    key: str
    fingerprint: str


@dataclass(slots=True)
class Result:
    """What became of one request (or of a row that could not be sent)."""

    status: Status
    response: str | None = None
    reasoning_content: str | None = None
    tool_calls: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    response_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    # Everything paid for this request whose usage came back (all attempts, all runs);
    # priced once, by the dispatcher, when the answer arrives. None: unpriced or unknown.
    cost_usd: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    attempts: int = 0
    latency_ms: float | None = None
    completed_at: datetime | None = None
    reasks: int = 0  # follow-up turns that asked again (``request.reask``), in ``attempts``
    cut_off_retried: bool = False  # sent again with ``request.cut_off_retry_tokens``
    # The answer came from batchrun's emulator (its responses carry x-batchrun-emulator).
    synthetic: bool = False
    # This run's paid attempts, for the checkpoint's record of charges (not stored with
    # the answer; empty when read back). Must stay the last field: see store.checkpoint.
    charges: tuple[Charge, ...] = ()


@dataclass(frozen=True, slots=True)
class Charge:
    """One attempt the API may have billed: its real cost when its usage came back,
    else the worst case the budget reserved for it (``usage_known = False``)."""

    cost_usd: float
    usage_known: bool
    at: float = field(default=0.0, compare=False)  # time.time() when the attempt ended
    # The attempt's write-ahead record in the checkpoint (``store.intents``), which the
    # commit that stores this charge deletes; None when none was written.
    intent: int | None = field(default=None, compare=False)


RequestResult = tuple[Request, Result]
"""A request and what became of it: what the dispatcher emits, the pipeline parses and
the checkpoint writer stores (a ``pending`` result: a row given up after paid attempts,
of which only the charges are stored)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A checkpointed result and the key of the row whose request earned it.

    Rows with an identical request share one answer; a row whose key differs from
    ``owner_key`` reused it (nothing was sent or paid for that row).
    """

    owner_key: str
    result: Result


RESULT_COLUMNS: tuple[str, ...] = (
    "response",
    "reasoning_content",
    "tool_calls",
    "finish_reason",
    "model",
    "response_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "status",
    "error_type",
    "error_message",
    "attempts",
    "latency_ms",
    "completed_at",
    "reasks",
    "cut_off_retried",
)
"""The columns batchrun adds after the input's, in order (parsed columns follow)."""

EXTRA_COLUMNS: tuple[str, ...] = ("shared", "synthetic")
"""Columns after the result and parsed ones: ``shared`` is true when the row
reused another row's answer (dedupe), so ``sum(tokens where not shared)`` is the bill;
``synthetic`` when its answer came from batchrun's emulator."""
