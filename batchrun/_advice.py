"""Why a run is slow when the job itself is the reason: an unset ``max_completion_tokens``.

A tokens-per-minute limit counts each request as its prompt plus the most it may
answer. With ``request.max_completion_tokens`` unset that is the API's cap
(128,000), so 1,000,000 TPM paces a run at ~7 requests a minute whatever the
answers really use. ``run`` (a warning, once) and ``plan`` (text and JSON) say so
when that reservation is what binds: the requests a minute the TPM allows are
below half the RPM, or no RPM is known and the reservation outweighs the prompt.
"""

from __future__ import annotations

import logging

from batchrun._config import MAX_COMPLETION_TOKENS_LIMIT, Job, Limits
from batchrun._ratelimit import LearnedLimits

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
    """Logs ``reservation_note`` once, as soon as a TPM is known (configured or learned)."""

    def __init__(self, job: Job) -> None:
        self.max_completion_tokens = job.request.max_completion_tokens
        self.pending = self.max_completion_tokens is None

    def check(self, limits: Limits, learned: LearnedLimits, est_prompt_tokens: int) -> None:
        tpm = lowest(limits.tokens_per_minute, learned.tpm)
        if tpm is None:
            return  # not known yet: asked again before the next send
        self.pending = False
        note = reservation_note(
            rpm=lowest(limits.requests_per_minute, learned.rpm),
            tpm=tpm,
            est_prompt_tokens=est_prompt_tokens,
            max_completion_tokens=self.max_completion_tokens,
        )
        if note is not None:
            log.warning("%s", note)
