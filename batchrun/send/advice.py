"""How long a job takes (``plan``), and why a run is slow when an unset
``max_completion_tokens`` is the reason (``run`` and ``plan``).

A tokens-per-minute limit counts each request as its prompt plus the most it may
answer. With ``request.max_completion_tokens`` unset that is the API's cap
(128,000), so 1,000,000 TPM paces a run at ~7 requests a minute whatever the
answers really use. ``run`` (a warning, once) and ``plan`` (text and JSON) say so
when that reservation is what binds: the requests a minute the TPM allows are
below half the RPM, or no RPM is known and the reservation outweighs the prompt.
"""

from __future__ import annotations

import logging
import math

from batchrun.job.config import MAX_COMPLETION_TOKENS_LIMIT, Job, Limits
from batchrun.send.ratelimit import LearnedLimits
from batchrun.store.keptlimits import KeptLimits

log = logging.getLogger("batchrun")

WELL_BELOW = 0.5
"""The reservation binds when TPM allows fewer than this share of the RPM's requests."""


def lowest(*limits: int | None) -> int | None:
    """The tightest of the known limits (configured, learned), None when none is."""
    known = [limit for limit in limits if limit]
    return min(known) if known else None


def reservation_note(
    *, rpm: int | None, tpm: int | None, est_prompt_tokens: int, max_completion_tokens: int | None
) -> str | None:
    """What to tell the user when the unset ``max_completion_tokens`` sets the pace."""
    if max_completion_tokens is not None or not tpm:
        return None
    reserved = est_prompt_tokens + MAX_COMPLETION_TOKENS_LIMIT
    per_minute = tpm / reserved
    if rpm and per_minute >= rpm * WELL_BELOW:
        return None
    if not rpm and est_prompt_tokens >= MAX_COMPLETION_TOKENS_LIMIT:
        return None
    of_rpm = f" of the {rpm:,} RPM allowed" if rpm else ""
    return (
        f"request.max_completion_tokens is unset, so each request reserves"
        f" {MAX_COMPLETION_TOKENS_LIMIT:,} completion tokens (+~{est_prompt_tokens:,} prompt)"
        f" against {tpm:,} TPM: ~{per_minute:.1f} requests a minute{of_rpm};"
        " set request.max_completion_tokens (the longest answer you expect) to go faster"
    )


class ReservationWarning:
    """Logs ``reservation_note`` once, after the first answer once a TPM is known
    (configured or learned), unless the API counts real tokens."""

    def __init__(self, job: Job) -> None:
        self.max_completion_tokens = job.request.max_completion_tokens
        self.pending = self.max_completion_tokens is None

    def check(
        self, limits: Limits, learned: LearnedLimits, est_prompt_tokens: int, counts_real: bool
    ) -> None:
        """After an answer: ``counts_real`` (the API counts real tokens, so unused
        reservations are given back) means the reservation does not set the pace."""
        if counts_real:
            self.pending = False
            return
        if not (limits.tokens_per_minute or learned.tpm):
            return  # not known yet: asked again after the next answer (a cheap test)
        tpm = lowest(limits.tokens_per_minute, learned.tpm)
        self.pending = False
        note = reservation_note(
            rpm=lowest(limits.requests_per_minute, learned.rpm),
            tpm=tpm,
            est_prompt_tokens=est_prompt_tokens,
            max_completion_tokens=self.max_completion_tokens,
        )
        if note is not None:
            log.warning("%s", note, extra={"event": "advice"})


def wall_time(
    job: Job, requests: int, prompt_tokens: int, latency_ms: float | None, learned: KeptLimits
) -> tuple[float | None, str]:
    """The slowest of the known bounds, in whole seconds: the rate limits (the job's,
    else those a run learned) and, after a pilot, concurrency."""
    limits = job.limits
    bounds: list[tuple[float, str]] = []
    rpm, rpm_label = _limit(limits.requests_per_minute, learned.rpm, "RPM", learned)
    if rpm:
        bounds.append((60.0 * requests / rpm, rpm_label))
    tpm, tpm_label = _limit(limits.tokens_per_minute, learned.tpm, "TPM", learned)
    if tpm:
        # The limiter counts each request as its estimate plus max_completion_tokens.
        tokens = prompt_tokens + requests * job.request.worst_case_completion_tokens
        bounds.append((60.0 * tokens / tpm, tpm_label))
    if latency_ms is not None:  # a pilot's mean latency
        seconds = requests * latency_ms / 1000.0 / limits.concurrency
        bounds.append((seconds, f"pilot latency x limits.concurrency = {limits.concurrency}"))
    if not bounds:
        return None, "unknown: limited by the API's headers (no requests/tokens_per_minute set)"
    seconds, bound = max(bounds)
    return float(math.ceil(seconds)), bound  # the text shows exactly what the JSON says


def _limit(
    configured: int | None, learned: int | None, unit: str, kept: KeptLimits
) -> tuple[int | None, str]:
    """The tighter of a configured and a learned limit, and how to name it."""
    key = "requests_per_minute" if unit == "RPM" else "tokens_per_minute"
    if learned and (not configured or learned < configured):
        return learned, f"~{learned:,} {unit} learned from the API on {kept.learned_at}"
    return configured, f"limits.{key} = {configured}"


def duration(seconds: float) -> str:
    """Whole seconds as text: ``150`` -> "2 min 30 s", ``3_725`` -> "1 h 2 min 5 s"."""
    hours, rest = divmod(math.ceil(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "min"), (secs, "s")]
    return " ".join(f"{n} {unit}" for n, unit in parts if n) or "0 s"
