"""A run's exit code in words, for the person on call and the scheduler's log:

exit 1: 45 failed rows > limits.max_failed_rows = 5 (parse_error 45: the answers were
cut off at max_completion_tokens = 64)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Outcome", "exit_reason"]

_RERUN = "run the same command again to continue"


@dataclass(frozen=True)
class Outcome:
    """What the reason is made of (``engines.base.Run._summary`` fills it)."""

    exit_code: int
    stopped: str | None
    rows: int
    by_status: Mapping[str, int]
    by_error_type: Mapping[str, int] = field(default_factory=dict)
    max_failed_rows: int = 0
    cut_off: int = 0  # failed rows whose answer stopped at max_completion_tokens
    max_completion_tokens: int | None = None
    fatal: str | None = None
    max_cost_usd: float | None = None
    run_cost_usd: float | None = None
    signal: str | None = None  # the signal that stopped the run


def exit_reason(outcome: Outcome) -> str:
    """``exit N: why``, one line."""
    return f"exit {outcome.exit_code}: {_why(outcome)}"


def _why(o: Outcome) -> str:
    pending = o.by_status.get("pending", 0)
    if o.stopped == "interrupted":
        by = o.signal or "a signal"
        return f"interrupted by {by}, {pending} rows pending; {_RERUN}"
    if o.stopped == "fatal":
        return f"the API refused the job: {o.fatal}"
    if o.stopped == "budget":
        spent = "" if o.run_cost_usd is None else f" (this run spent ${o.run_cost_usd:.4f})"
        return (
            f"stopped by the budget, limits.max_cost_usd = {o.max_cost_usd} reached{spent},"
            f" {pending} rows pending; raise it and run the same command again to continue"
        )
    failed = o.by_status.get("error", 0) + o.by_status.get("invalid", 0)
    if not failed:
        return f"all {o.rows} rows done"
    compare = ">" if failed > o.max_failed_rows else "<="
    return (
        f"{failed} failed {_rows(failed)} {compare} limits.max_failed_rows ="
        f" {o.max_failed_rows} ({_failures(o)})"
    )


def _failures(o: Outcome) -> str:
    parts = []
    for error_type, count in sorted(o.by_error_type.items(), key=lambda kv: (-kv[1], kv[0])):
        part = f"{error_type} {count}"
        if error_type == "parse_error" and o.cut_off:
            limit = o.max_completion_tokens
            part += f": the answers were cut off at max_completion_tokens = {limit}"
            if o.cut_off < count:
                part += f" ({o.cut_off} of them)"
        parts.append(part)
    return ", ".join(parts)


def _rows(count: int) -> str:
    return "row" if count == 1 else "rows"
